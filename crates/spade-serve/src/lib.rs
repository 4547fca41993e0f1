//! `spade serve`: a local painting demo (GauGAN's). One page, two JSON endpoints and one
//! synthesis endpoint, over one [`Synthesizer`] shared by every request.
//!
//! - `GET /`: the page (plain HTML, CSS and JavaScript, embedded: `page.html`).
//! - `GET /api/info`: the model's size, classes count, whether it has an encoder, the caps.
//! - `GET /api/classes`: `[{"id": 0, "name": "...", "color": [r, g, b]}, ...]`.
//! - `POST /api/synthesize?seed=N`: the body is a PNG label map (8- or 16-bit grayscale ids,
//!   palette-indexed ids, or RGB(A) colours of the palette), or `multipart/form-data` with the
//!   PNG in a `label` part and an optional `style` image (when the checkpoint has an encoder);
//!   the answer is `image/png` at the model's size. Label maps of another size are resized
//!   (nearest) to the model's. When the model needs instance maps, the label map's regions are
//!   the instances.
//!
//! Bad requests get a 4xx with `{"error": "..."}`: 400 for a body that is not a PNG, a colour
//! outside the palette, an id out of range or a bad seed; 413 for a body over
//! [`Limits::max_body_bytes`] (16 MiB by default) or an image side over [`Limits::max_side`]
//! (4096 by default); 415 for another content type. At most [`Limits::max_concurrent`]
//! syntheses run at once (the rest wait), each on a blocking thread.
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::SeedableRng;
use spade_data::Palette;
use spade_synth::{rgb_from_tensor, Input, Synthesizer, ZSource};
use tokio::sync::Semaphore;

pub mod client;

const PAGE: &str = include_str!("page.html");
const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Caps on what a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (PNG or multipart), in bytes.
    pub max_body_bytes: usize,
    /// Largest width or height of an uploaded label map or style image, in pixels.
    pub max_side: u32,
    /// Syntheses running at once; further requests wait their turn.
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 16 << 20, max_side: 4096, max_concurrent: 2 }
    }
}

/// What every request shares: the model, its palette and the caps.
pub struct App {
    synth: Synthesizer,
    palette: Palette,
    limits: Limits,
    permits: Arc<Semaphore>,
    default_class: u32,
}

impl App {
    /// `palette` must name every class of the model (see `spade_synth::palette::for_options`).
    pub fn new(synth: Synthesizer, palette: Palette, limits: Limits) -> Arc<App> {
        // The class the eraser paints and a new canvas starts with: the sky when there is one.
        let default_class = ["sky", "sky-other"]
            .iter()
            .find_map(|n| palette.classes.iter().find(|c| c.name == *n))
            .or_else(|| palette.classes.iter().min_by_key(|c| c.id))
            .map_or(0, |c| c.id);
        Arc::new(App {
            synth,
            palette,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            default_class,
        })
    }

    pub fn synthesizer(&self) -> &Synthesizer {
        &self.synth
    }
}

/// The routes, over a shared [`App`].
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/info", get(info))
        .route("/api/classes", get(classes))
        .route("/api/synthesize", post(synthesize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page: try GET / or POST /api/synthesize") })
        // The synthesis handler reads bodies itself under `Limits::max_body_bytes`; axum's own
        // 2 MB default would otherwise cap multipart parts below that.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> std::io::Result<()> {
    axum::serve(listener, router(app)).await
}

/// Binds `addr` and serves `app` on a background thread with its own runtime; returns the bound
/// address (port 0 picks a free one). For tests and the bench.
pub fn spawn(addr: SocketAddr, app: Arc<App>) -> std::io::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    std::thread::spawn(move || {
        if let Err(e) = rt.block_on(serve(listener, app)) {
            eprintln!("spade serve: {e}");
        }
    });
    Ok(local)
}

/// A 4xx/5xx answer with `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

async fn info(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let s = &app.synth;
    let (h, w) = s.size();
    Json(serde_json::json!({
        "width": w, "height": h,
        "label_nc": s.label_nc(),
        "netG": s.options().net_g.as_str(),
        "uses_z": s.uses_z(),
        "has_encoder": s.has_encoder(),
        "needs_instances": s.needs_instances(),
        "default_class": app.default_class,
        "max_body_bytes": app.limits.max_body_bytes,
        "max_side": app.limits.max_side,
    }))
}

async fn classes(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let mut v = app.palette.classes.clone();
    v.sort_by_key(|c| c.id);
    Json(serde_json::to_value(v).expect("classes serialise"))
}

fn parse_seed(query: Option<&str>) -> Result<u64, ApiError> {
    let mut seed = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "seed" {
            seed = v.parse().map_err(|_| {
                ApiError::bad(format!("seed={v:?} is not a seed: expected a whole number 0..={}", u64::MAX))
            })?;
        }
    }
    Ok(seed)
}

/// Width and height from a PNG's header, without decoding the pixels.
fn png_size(bytes: &[u8], what: &str) -> Result<(u32, u32), ApiError> {
    if bytes.len() < 8 || &bytes[..8] != PNG_SIGNATURE {
        return Err(ApiError::bad(format!(
            "the {what} is not a PNG (its first bytes are not the PNG signature); expected a PNG of \
             8- or 16-bit grayscale class ids or RGB colours of the palette (GET /api/classes)"
        )));
    }
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(|e| ApiError::bad(format!("the {what} is not a readable PNG: {e}")))?;
    let i = reader.info();
    Ok((i.width, i.height))
}

fn check_side(app: &App, w: u32, h: u32, what: &str) -> Result<(), ApiError> {
    let cap = app.limits.max_side;
    if w > cap || h > cap {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the {what} is {w}x{h}; the cap is {cap} pixels a side (the model works at {}x{})",
                app.synth.size().1,
                app.synth.size().0
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(ApiError::bad(format!("the {what} is {w}x{h}: empty")));
    }
    Ok(())
}

/// The request's parts: the label PNG and an optional style image.
async fn read_parts(app: &App, req: Request) -> Result<(Bytes, Option<Bytes>), ApiError> {
    let (parts, body) = req.into_parts();
    let cap = app.limits.max_body_bytes;
    let bytes = axum::body::to_bytes(body, cap).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the cap of {cap} bytes (--max-body-bytes)"),
        )
    })?;
    let ctype = content_type(&parts.headers);
    if ctype.starts_with("multipart/form-data") {
        let req = Request::from_parts(parts, Body::from(bytes));
        let mut mp = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad(format!("the multipart body cannot be read: {e}")))?;
        let (mut label, mut style) = (None, None);
        while let Some(field) = mp.next_field().await.map_err(|e| ApiError::bad(format!("multipart: {e}")))? {
            let name = field.name().unwrap_or("").to_string();
            let data = field.bytes().await.map_err(|e| ApiError::bad(format!("multipart part {name:?}: {e}")))?;
            match name.as_str() {
                "label" => label = Some(data),
                "style" => style = Some(data),
                other => {
                    return Err(ApiError::bad(format!(
                        "unknown multipart part {other:?}: expected \"label\" and optionally \"style\""
                    )))
                }
            }
        }
        let label =
            label.ok_or_else(|| ApiError::bad("the multipart body has no \"label\" part (the PNG label map)"))?;
        Ok((label, style))
    } else if ctype.is_empty() || ctype.starts_with("image/png") || ctype.starts_with("application/octet-stream") {
        Ok((bytes, None))
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {ctype:?}: expected image/png (the label map) or multipart/form-data (label + style)"
            ),
        ))
    }
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_ascii_lowercase()
}

async fn synthesize(State(app): State<Arc<App>>, RawQuery(q): RawQuery, req: Request) -> Result<Response, ApiError> {
    let seed = parse_seed(q.as_deref())?;
    let (label, style) = read_parts(&app, req).await?;
    let (w, h) = png_size(&label, "label map")?;
    check_side(&app, w, h, "label map")?;
    let style = match style {
        None => None,
        Some(_) if !app.synth.has_encoder() => {
            return Err(ApiError::bad("this checkpoint has no encoder (net_E), so it cannot take a style image"))
        }
        Some(b) => {
            let (sw, sh) = image::ImageReader::new(Cursor::new(&b[..]))
                .with_guessed_format()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
                .ok_or_else(|| ApiError::bad("the style image is not an image this server reads (PNG or JPEG)"))?;
            check_side(&app, sw, sh, "style image")?;
            Some(b)
        }
    };
    let permit = app
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let app2 = app.clone();
    let out = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        synthesize_blocking(&app2, &label, style.as_deref(), seed)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the synthesis task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], out).into_response())
}

/// Decodes, checks and synthesizes one request; the PNG bytes of the image.
fn synthesize_blocking(app: &App, label: &[u8], style: Option<&[u8]>, seed: u64) -> Result<Vec<u8>, ApiError> {
    let map = spade_data::decode_label_png(label, Path::new("the label map"), Some(&app.palette)).map_err(|e| {
        ApiError::bad(match e {
            spade_data::DataError::UnknownColour { rgb, x, y, count, .. } => format!(
                "the label map has colour {rgb:?} at (x={x}, y={y}), which is not one of the palette's {count} class colours (GET /api/classes)"
            ),
            e => e.to_string(),
        })
    })?;
    let ids = app.synth.ids_from_map(map, "the label map").map_err(|e| ApiError::bad(e.to_string()))?;
    let z = match style {
        Some(b) => {
            let img = image::load_from_memory(b)
                .map_err(|e| ApiError::bad(format!("the style image cannot be decoded: {e}")))?;
            let rgb = img.to_rgb8();
            ZSource::Style(spade_data::RgbImage {
                width: rgb.width() as usize,
                height: rgb.height() as usize,
                data: rgb.into_raw(),
            })
        }
        None => ZSource::Random,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let internal = |e: spade_synth::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let img = app.synth.synthesize(&[Input { ids, instance: None, z }], &mut rng).map_err(internal)?;
    let rgb = rgb_from_tensor(&img.get(0).map_err(|e| internal(e.into()))?).map_err(internal)?;
    let mut png = Vec::new();
    rgb.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the PNG: {e}")))?;
    Ok(png)
}
