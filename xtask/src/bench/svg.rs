//! A hand-written SVG plot of latency distributions: one line per peer, latency (log
//! scale) against percentile, with the percentile axis spread the usual way
//! (`-log10(1 - p)`: 90 %, 99 %, 99.9 % … equally spaced), so the tail is visible.

/// Line colours, one per series.
const COLOURS: [&str; 6] = [
    "#444444", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd",
];

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Percentile (0–100) as "nines": 0 for p0, 1 for p90, 2 for p99, … (p100 is capped).
fn nines(p: f64, cap: f64) -> f64 {
    if p >= 100.0 {
        cap
    } else {
        (-(1.0 - p / 100.0).log10()).min(cap)
    }
}

/// `series`: (name, [(percentile, µs)]) → an SVG document.
pub fn latency_plot(title: &str, series: &[(String, Vec<[f64; 2]>)]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let max_nines = points
        .clone()
        .filter(|p| p[0] < 100.0)
        .map(|p| nines(p[0], 6.0))
        .fold(1.0_f64, f64::max)
        .ceil();
    let cap = max_nines + 0.5;
    let (mut low, mut high) = (f64::MAX, 1.0_f64);
    for p in points {
        if p[1] > 0.0 {
            low = low.min(p[1]);
            high = high.max(p[1]);
        }
    }
    if low == f64::MAX {
        low = 1.0;
    }
    let (y_min, y_max) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |n: f64| LEFT + n / cap * plot_w;
    let y = |us: f64| TOP + plot_h - (us.max(1.0).log10() - y_min) / (y_max - y_min) * plot_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    for n in 0..=(max_nines as usize) {
        let label = match n {
            0 => "0".to_string(),
            _ => format!("{}", 100.0 - 100.0 * 10f64.powi(-(n as i32))),
        };
        let xn = x(n as f64);
        svg.push_str(&format!(
            "<line x1=\"{xn:.1}\" y1=\"{TOP}\" x2=\"{xn:.1}\" y2=\"{:.1}\" stroke=\"#dddddd\"/>\n\
             <text x=\"{xn:.1}\" y=\"{:.1}\" text-anchor=\"middle\">p{label}</text>\n",
            TOP + plot_h,
            TOP + plot_h + 16.0
        ));
    }
    let xm = x(cap);
    svg.push_str(&format!(
        "<text x=\"{xm:.1}\" y=\"{:.1}\" text-anchor=\"middle\">max</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n",
        TOP + plot_h + 16.0,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    ));
    let mut decade = y_min;
    while decade <= y_max {
        let us = 10f64.powf(decade);
        let yd = y(us);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        svg.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{yd:.1}\" x2=\"{:.1}\" y2=\"{yd:.1}\" stroke=\"#dddddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
            LEFT + plot_w,
            LEFT - 6.0,
            yd + 4.0
        ));
        decade += 1.0;
    }
    svg.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#888888\"/>\n\
         <text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">latency (log scale)</text>\n",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    ));
    // Series and legend.
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(nines(p[0], cap)), y(p[1])))
            .collect();
        if !path.is_empty() {
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
                path.join(" ")
            ));
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 12.0;
        svg.push_str(&format!(
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Escapes text for XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_series_with_a_legend() {
        let series = vec![
            (
                "keel".to_string(),
                vec![[0.0, 50.0], [90.0, 80.0], [99.0, 200.0], [100.0, 900.0]],
            ),
            (
                "envoy".to_string(),
                vec![[0.0, 100.0], [99.9, 3000.0], [100.0, 5000.0]],
            ),
        ];
        let svg = latency_plot("a <title>", &series);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">keel</text>") && svg.contains(">envoy</text>"));
        assert!(svg.contains("a &lt;title&gt;"));
        assert!(svg.contains(">p99.9</text>"), "{svg}");
        assert!(svg.contains("1 ms"), "{svg}");
        assert!((nines(99.0, 5.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0, 3.5), 3.5);
    }
}
