//! The HTTP API on a small model with random weights (no browser): answers, determinism, and
//! every kind of bad request answered with a 4xx JSON error while the server stays up.
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;

use candle_core::{DType, Device};
use spade_models::checkpoint::Generator;
use spade_models::{ConvEncoder, NetOptions, ParamStore};
use spade_serve::client::{request, Answer};
use spade_serve::{App, Limits};
use spade_synth::{palette, Synthesizer};

// The encoder (ConvEncoder, as the reference's) needs 256x256 inputs.
const W: u32 = 256;
const H: u32 = 256;

/// A VAE SPADE generator over the synthetic dataset's 14 classes, with instance edges, and an
/// encoder: every path of the API.
fn app(limits: Limits, encoder: bool) -> Arc<App> {
    let opt =
        NetOptions { label_nc: 14, ngf: 2, crop_size: W as usize, use_vae: true, z_dim: 256, ..Default::default() };
    let gs = ParamStore::fresh(7, DType::F32, &Device::Cpu).frozen();
    let g = Generator::new(&opt, &gs.root()).unwrap();
    let e = encoder.then(|| {
        let es = ParamStore::fresh(8, DType::F32, &Device::Cpu).frozen();
        ConvEncoder::new(&opt, &es.root()).unwrap()
    });
    let pal = palette::for_options(&opt, None).unwrap();
    App::new(Synthesizer::new(opt, g, e, Device::Cpu), pal, limits)
}

fn start(limits: Limits, encoder: bool) -> SocketAddr {
    spade_serve::spawn("127.0.0.1:0".parse().unwrap(), app(limits, encoder)).unwrap()
}

/// Left half class 8 (grass), right half class 6 (water).
fn ids(x: u32, _y: u32) -> u8 {
    if x < W / 2 {
        8
    } else {
        6
    }
}

fn gray_png(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn gray16_png(w: u32, h: u32, f: impl Fn(u32, u32) -> u16) -> Vec<u8> {
    let img: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
        image::ImageBuffer::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn rgb_png(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn post(addr: SocketAddr, query: &str, ct: Option<&str>, body: &[u8]) -> Answer {
    request(addr, "POST", &format!("/api/synthesize{query}"), ct, body).unwrap()
}

fn decoded(a: &Answer) -> image::RgbImage {
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), Some("image/png"));
    image::load_from_memory(&a.body).unwrap().to_rgb8()
}

fn error_of(a: &Answer, status: u16) -> String {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.header("content-type").unwrap_or("").starts_with("application/json"), "{:?}", a.headers);
    a.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {}", String::from_utf8_lossy(&a.body)))
        .to_string()
}

#[test]
fn page_info_and_classes() {
    let addr = start(Limits::default(), true);
    let page = request(addr, "GET", "/", None, b"").unwrap();
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    for id in [
        "id=\"canvas\"",
        "id=\"palette\"",
        "id=\"brush-size\"",
        "id=\"tool-fill\"",
        "id=\"tool-eraser\"",
        "id=\"undo\"",
        "id=\"clear\"",
        "id=\"seed\"",
        "id=\"style\"",
    ] {
        assert!(html.contains(id), "the page has no {id}");
    }
    let info = request(addr, "GET", "/api/info", None, b"").unwrap().json();
    assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(W as u64), Some(H as u64)));
    assert_eq!(info["label_nc"], 14);
    assert_eq!(info["has_encoder"], true);
    assert_eq!(info["default_class"], 0); // sky
    let classes = request(addr, "GET", "/api/classes", None, b"").unwrap().json();
    let classes = classes.as_array().unwrap();
    assert_eq!(classes.len(), 14);
    assert_eq!(classes[6], serde_json::json!({"id": 6, "name": "water", "color": [20, 60, 200]}));
    let missing = request(addr, "GET", "/nope", None, b"").unwrap();
    assert!(error_of(&missing, 404).contains("no such page"));
}

#[test]
fn gray_ids_rgb_colours_and_16_bit_give_the_same_image_and_seeds_differ() {
    let addr = start(Limits::default(), false);
    let gray = decoded(&post(addr, "?seed=3", Some("image/png"), &gray_png(W, H, ids)));
    assert_eq!(gray.dimensions(), (W, H));
    let colours = palette::Builtin::Synthetic.palette();
    let rgb = decoded(&post(
        addr,
        "?seed=3",
        Some("image/png"),
        &rgb_png(W, H, |x, y| colours.classes[ids(x, y) as usize].color),
    ));
    assert_eq!(gray, rgb, "an RGB label map in the palette's colours is the same input as its ids");
    let g16 = decoded(&post(addr, "?seed=3", None, &gray16_png(W, H, |x, y| ids(x, y) as u16)));
    assert_eq!(gray, g16);
    // A label map of another size is resized (nearest) to the model's: 64x64 of 2x2 blocks.
    let big = decoded(&post(addr, "?seed=3", Some("image/png"), &gray_png(2 * W, 2 * H, |x, y| ids(x / 2, y / 2))));
    assert_eq!(gray, big);
    let again = decoded(&post(addr, "?seed=3", Some("image/png"), &gray_png(W, H, ids)));
    assert_eq!(gray, again, "the same seed gives the same image");
    let other = decoded(&post(addr, "?seed=4", Some("image/png"), &gray_png(W, H, ids)));
    assert_ne!(gray, other, "another seed gives another z, so another image");
    let classes =
        decoded(&post(addr, "?seed=3", Some("image/png"), &gray_png(W, H, |x, _y| if x < W / 2 { 8 } else { 3 })));
    assert_ne!(gray, classes, "another class in a region gives another image");
}

#[test]
fn style_image_by_multipart() {
    let addr = start(Limits::default(), true);
    let label = gray_png(W, H, ids);
    let style = rgb_png(40, 30, |x, y| [(x * 6) as u8, (y * 8) as u8, 90]);
    let b = "XyZbOuNdArY";
    let mut body = Vec::new();
    for (name, ct, data) in [("label", "image/png", &label), ("style", "image/png", &style)] {
        body.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={b}");
    let styled = decoded(&post(addr, "?seed=1", Some(&ct), &body));
    let styled2 = decoded(&post(addr, "?seed=1", Some(&ct), &body));
    assert_eq!(styled, styled2);
    let plain = decoded(&post(addr, "?seed=1", Some("image/png"), &label));
    assert_ne!(styled, plain, "the style's mean and variance replace the random z");

    // Without an encoder, a style image is a bad request.
    let no_enc = start(Limits::default(), false);
    let e = error_of(&post(no_enc, "?seed=1", Some(&ct), &body), 400);
    assert!(e.contains("no encoder"), "{e}");
    // A multipart body without the label part.
    let only_style = String::from_utf8_lossy(&body).replace("name=\"label\"", "name=\"lable\"");
    let e = error_of(&post(addr, "", Some(&ct), only_style.as_bytes()), 400);
    assert!(e.contains("unknown multipart part \"lable\""), "{e}");
}

#[test]
fn bad_requests_get_4xx_json_and_the_server_stays_up() {
    let limits = Limits { max_body_bytes: 64 << 10, max_side: 300, max_concurrent: 2 };
    let addr = start(limits, false);
    let e = error_of(&post(addr, "", Some("image/png"), b"GIF89a this is not a png"), 400);
    assert!(e.contains("not a PNG"), "{e}");
    let mut truncated = gray_png(W, H, ids);
    truncated.truncate(40);
    let e = error_of(&post(addr, "", Some("image/png"), &truncated), 400);
    assert!(e.contains("label map"), "{e}");
    let e = error_of(
        &post(
            addr,
            "",
            Some("image/png"),
            &rgb_png(W, H, |x, y| if (x, y) == (5, 9) { [1, 2, 3] } else { [110, 170, 240] }),
        ),
        400,
    );
    assert!(e.contains("[1, 2, 3]") && e.contains("(x=5, y=9)") && e.contains("palette"), "{e}");
    let e = error_of(
        &post(addr, "", Some("image/png"), &gray_png(W, H, |x, y| if (x, y) == (7, 1) { 15 } else { 0 })),
        400,
    );
    assert!(e.contains("label value 15 at (x=7, y=1)") && e.contains("0..=13"), "{e}");
    let e = error_of(&post(addr, "", Some("image/png"), &gray16_png(W, H, |_, _| 4000)), 400);
    assert!(e.contains("label value 4000"), "{e}");
    let e = error_of(&post(addr, "", Some("image/png"), &vec![0u8; 100 << 10]), 413);
    assert!(e.contains("over the cap of 65536 bytes"), "{e}");
    let e = error_of(&post(addr, "", Some("image/png"), &gray_png(301, 8, |_, _| 0)), 413);
    assert!(e.contains("301x8") && e.contains("cap is 300 pixels a side"), "{e}");
    let e = error_of(&post(addr, "", Some("text/plain"), b"sky"), 415);
    assert!(e.contains("expected image/png"), "{e}");
    let e = error_of(&post(addr, "?seed=minus-one", Some("image/png"), &gray_png(W, H, ids)), 400);
    assert!(e.contains("not a seed"), "{e}");
    // Still serving.
    let ok = decoded(&post(addr, "?seed=0", Some("image/png"), &gray_png(W, H, ids)));
    assert_eq!(ok.dimensions(), (W, H));
}

#[test]
fn concurrent_requests_share_one_model() {
    let addr = start(Limits { max_concurrent: 2, ..Limits::default() }, false);
    let want = decoded(&post(addr, "?seed=9", Some("image/png"), &gray_png(W, H, ids)));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let seed = if i % 2 == 0 { 9 } else { 10 };
                (seed, decoded(&post(addr, &format!("?seed={seed}"), Some("image/png"), &gray_png(W, H, ids))))
            })
        })
        .collect();
    let mut other = None;
    for t in threads {
        let (seed, img) = t.join().unwrap();
        if seed == 9 {
            assert_eq!(img, want);
        } else {
            assert_ne!(img, want);
            assert!(other.get_or_insert(img.clone()) == &img, "the same seed gives the same image under load");
        }
    }
}
