//! The admin HTTP server: accept loop, per-connection hyper service (HTTP/1.1 and h2c),
//! dispatch through the handler table, and graceful stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::handlers::{self, AdminRequest, AdminResponse};
use super::{Admin, STOP_GRACE};

/// Serves until `stop` turns true, then lets open connections finish their in-flight
/// requests for up to [`STOP_GRACE`].
pub(super) async fn serve(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("admin: cannot register the listening socket: {e}");
            return;
        }
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, admin.clone(), stop.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!("admin: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("admin: closing connections still open after the grace period");
    }
}

async fn serve_connection(stream: TcpStream, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(respond(&admin, request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("admin: connection ended: {e}");
            }
        }
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn respond(admin: &Arc<Admin>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let request = AdminRequest::new(request.method().clone(), path_and_query);
    tracing::debug!(method = %request.method, path = %request.path, "admin request");
    into_http(dispatch(admin, request).await)
}

/// Finds the handler and runs it: 404 with the help text for unknown paths, 405 for a
/// non-POST on a mutating endpoint, blocking handlers on the blocking pool.
pub(super) async fn dispatch(admin: &Arc<Admin>, request: AdminRequest) -> AdminResponse {
    let Some(handler) = admin.handler(&request.path) else {
        return handlers::not_found(admin);
    };
    if handler.mutates_state && request.method != Method::POST {
        tracing::warn!(
            path = handler.path,
            method = %request.method,
            "admin path mutates state; POST required"
        );
        return handlers::post_required(&request.method);
    }
    if !handler.blocking {
        return (handler.run)(admin, &request);
    }
    let run = handler.run.clone();
    let admin = admin.clone();
    tokio::task::spawn_blocking(move || run(&admin, &request))
        .await
        .unwrap_or_else(|e| {
            AdminResponse::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("admin handler failed: {e}\n"),
            )
        })
}

fn into_http(response: AdminResponse) -> Response<Full<Bytes>> {
    let mut http = Response::new(Full::new(response.body));
    *http.status_mut() = response.status;
    let headers = http.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    // As Envoy: no caching, but keep the back button working; never sniff types.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    http
}
