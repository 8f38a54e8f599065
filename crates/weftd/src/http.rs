//! weftd's HTTP endpoint: `/healthz` (flanneld's `--healthz-ip`/`--healthz-port`): 200 while the
//! lease is held and etcd is reachable, 503 with the reason otherwise; `/metrics`: Prometheus text.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers "healthy?" with `Ok(())` or the reason it is not.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Renders the metrics page.
pub type MetricsPage = Arc<dyn Fn() -> String + Send + Sync>;

/// What one listener serves; either part may be off.
#[derive(Clone)]
pub struct Endpoints {
    pub health: Option<HealthCheck>,
    pub metrics: Option<MetricsPage>,
}

pub async fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, healthz = endpoints.health.is_some(), metrics = endpoints.metrics.is_some(), "serving http");
    loop {
        let (mut conn, _) = listener.accept().await?;
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, content_type, body) = match (path, &endpoints.health, &endpoints.metrics) {
                ("/healthz", Some(check), _) => match check() {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", "text/plain", format!("unhealthy: {why}\n")),
                },
                ("/metrics", _, Some(page)) => ("200 OK", "text/plain; version=0.0.4", page()),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /healthz or /metrics\n".to_string(),
                ),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}
