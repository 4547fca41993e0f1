//! Builders for tiny dataset trees in each layout.
#![allow(dead_code)]
use std::path::Path;

use spade_data::pngio::{write_gray_png, write_indexed_png, write_rgb_png};
use spade_data::{LabelMap, Palette, RgbImage};

pub fn map(w: usize, h: usize, f: impl Fn(usize, usize) -> u32) -> LabelMap {
    let mut data = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            data.push(f(x, y));
        }
    }
    LabelMap { height: h, width: w, data }
}

pub fn rgb(w: usize, h: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> RgbImage {
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&f(x, y));
        }
    }
    RgbImage { width: w, height: h, data }
}

fn mkdir(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
}

pub fn gray(path: &Path, m: &LabelMap) {
    mkdir(path);
    write_gray_png(path, m).unwrap();
}

pub fn indexed(path: &Path, m: &LabelMap, palette: &Palette) {
    mkdir(path);
    write_indexed_png(path, m, palette).unwrap();
}

pub fn png_rgb(path: &Path, img: &RgbImage) {
    mkdir(path);
    write_rgb_png(path, img).unwrap();
}

pub fn jpeg(path: &Path, img: &RgbImage) {
    mkdir(path);
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone()).unwrap();
    buf.save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

/// A label with a left and a right half (ids `a`, `b`), 8x6.
pub fn halves(a: u32, b: u32) -> LabelMap {
    map(8, 6, |x, _| if x < 4 { a } else { b })
}

pub fn photo() -> RgbImage {
    rgb(8, 6, |x, y| [(x * 30) as u8, (y * 40) as u8, 128])
}

/// `{split}_label/`, `{split}_img/`, `{split}_inst/` with the given stems.
pub fn coco_sample(root: &Path, split: &str, stems: &[&str]) {
    for (i, s) in stems.iter().enumerate() {
        gray(&root.join(format!("{split}_label/{s}.png")), &halves(i as u32 * 5, 255));
        jpeg(&root.join(format!("{split}_img/{s}.jpg")), &photo());
        gray(&root.join(format!("{split}_inst/{s}.png")), &halves(1, 2));
    }
}
