//! Property-based mutation tests of the PNG readers: random mutations of valid label,
//! instance and image PNGs decode as `Ok` or an error naming the file, never a panic, and
//! within a memory bound.

#[path = "../../spade-io/tests/support/mutate.rs"]
mod mutate;

use std::path::Path;

use mutate::{check_mutations, CASES};
use spade_data::LabelMap;

#[test]
fn mutated_label_png_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("label.png");
    let map = LabelMap { width: 24, height: 16, data: (0..24 * 16).map(|i| (i / 7 % 9) as u32).collect() };
    spade_data::pngio::write_gray_png(&p, &map).unwrap();
    let load = |p: &Path| spade_data::read_label_png(p, None).map(|_| ()).map_err(|e| e.to_string());
    check_mutations("label.png", &std::fs::read(&p).unwrap(), CASES, load);
}

#[test]
fn mutated_instance_png_16bit_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("inst.png");
    let map = LabelMap { width: 20, height: 12, data: (0..240).map(|i| 1000 + (i / 5) as u32).collect() };
    spade_data::pngio::write_gray_png(&p, &map).unwrap();
    let load = |p: &Path| spade_data::read_instance_png(p).map(|_| ()).map_err(|e| e.to_string());
    check_mutations("inst.png", &std::fs::read(&p).unwrap(), CASES, load);
}

#[test]
fn mutated_rgb_image_is_ok_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img.png");
    let img =
        spade_data::RgbImage { width: 16, height: 10, data: (0..16 * 10 * 3).map(|i| (i * 7 % 256) as u8).collect() };
    spade_data::pngio::write_rgb_png(&p, &img).unwrap();
    let load = |p: &Path| spade_data::read_image(p).map(|_| ()).map_err(|e| e.to_string());
    check_mutations("img.png", &std::fs::read(&p).unwrap(), CASES, load);
}
