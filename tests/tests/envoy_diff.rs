//! Differential tests of keel against a real Envoy 1.40: every case in `tests/diff/*.yaml`
//! is served by both with the same bootstrap, the same requests go to both, and every
//! difference is reported (see `keel_tests::diff` and `tests/diff/README.md`).
//!
//! `KEEL_DIFF_CASE=name[,name]` runs some cases; `KEEL_DIFF_SELF=1` compares Envoy with
//! a second Envoy (a check of the harness itself).

#[test]
fn keel_answers_like_envoy() {
    keel_tests::diff::run_from_env();
}
