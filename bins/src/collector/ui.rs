//! The web UI: one page (`/`) whose ES modules and ECharts are compiled into the binary by
//! `bins/build.rs` and served from memory under `/assets/`. Nothing is fetched from elsewhere
//! at run time, and the Content-Security-Policy says so to the browser too.
//!
//! Caching: the versioned ECharts file is immutable; the page and our modules are revalidated
//! on every load (cheap 304s through ETags), so a new binary never shows a stale UI.

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// The browser may talk to this origin only; inline styles are allowed because ECharts'
/// tooltips carry them.
const CSP: &str = "default-src 'self'; script-src 'self'; connect-src 'self'; \
    img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; \
    base-uri 'none'; frame-ancestors 'none'";

/// Routes `/` and `/assets/{*path}`; merge with [`super::router`] for the whole collector.
pub fn ui_router() -> Router {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { asset("index.html", &h) }),
        )
        .route(
            "/assets/{*path}",
            get(|Path(p): Path<String>, h: HeaderMap| async move { asset(&p, &h) }),
        )
}

/// Names of the embedded assets (for tests and diagnostics).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    embedded::ASSETS.iter().map(|a| a.0)
}

fn asset(path: &str, req: &HeaderMap) -> Response {
    let Some(&(name, body, ctype, etag)) = embedded::ASSETS.iter().find(|a| a.0 == path) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let cache = if name.starts_with("vendor/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if name == "index.html" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(uri: &str, inm: Option<&str>) -> Response {
        let mut req = Request::get(uri);
        if let Some(t) = inm {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        ui_router()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_page_and_assets_with_types_and_cache_headers() {
        let r = get("/", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(
            get("/", Some(&etag)).await.status(),
            StatusCode::NOT_MODIFIED
        );

        let r = get("/assets/app.js", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );

        let r = get("/assets/vendor/echarts-5.6.0.min.js", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 22).await.unwrap();
        assert!(body.len() > 500_000, "echarts is {} bytes", body.len());

        assert_eq!(
            get("/assets/nope.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/assets/../Cargo.toml", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    /// Every `/assets/...` the page names and every relative `import` in a module resolves to
    /// an embedded asset, so a file missing from the build shows here, not only in a browser.
    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let names: Vec<&str> = asset_names().collect();
        let text = |n: &str| {
            let a = embedded::ASSETS.iter().find(|a| a.0 == n).unwrap();
            std::str::from_utf8(a.1).unwrap().to_owned()
        };
        let html = text("index.html");
        for part in html.split("\"/assets/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                names.contains(&name),
                "index.html names missing asset {name}"
            );
        }
        for module in names
            .iter()
            .filter(|n| n.ends_with(".js") && !n.starts_with("vendor/"))
        {
            let dir = module.rsplit_once('/').map_or("", |(d, _)| d);
            for part in text(module).split(" from '").skip(1) {
                let spec = &part[..part.find('\'').unwrap()];
                let mut path: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            path.pop();
                        }
                        s => path.push(s),
                    }
                }
                let target = path.join("/");
                assert!(
                    names.contains(&target.as_str()),
                    "{module} imports missing {spec}"
                );
            }
        }
    }
}
