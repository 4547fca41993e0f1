//! PNG reading and writing for label, instance and image files.
//!
//! Label and instance maps are read without any colour conversion: 1/2/4/8/16-bit grayscale
//! values are the ids (as PIL's `L`, `I;16` modes give them; sub-byte grayscale is taken as raw
//! values, not scaled to 0..255), palette-indexed PNGs give their indices (as `np.array` of a PIL
//! `P` image does), and RGB(A) labels are mapped through a [`Palette`] when one is given.
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, FileKind, Result};
use crate::{LabelMap, RgbImage};

/// One class of a colour-coded dataset, as stored in `classes.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassInfo {
    pub id: u32,
    pub name: String,
    pub color: [u8; 3],
}

/// The contents of `classes.json`: class names and colours. It maps RGB label pixels to ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Palette {
    pub classes: Vec<ClassInfo>,
}

impl Palette {
    /// Reads and validates a `classes.json` (ids unique, colours unique).
    pub fn load(path: &Path) -> Result<Palette> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            kind: FileKind::Palette,
            source,
        })?;
        let palette: Palette = serde_json::from_str(&text).map_err(|e| DataError::Corrupt {
            path: path.to_path_buf(),
            kind: FileKind::Palette,
            detail: format!(
                "{e}; expected {{\"classes\": [{{\"id\": 0, \"name\": \"sky\", \"color\": [r, g, b]}}, ...]}}"
            ),
        })?;
        let mut ids = HashMap::new();
        let mut colours = HashMap::new();
        for c in &palette.classes {
            if let Some(prev) = ids.insert(c.id, &c.name) {
                return Err(DataError::Corrupt {
                    path: path.to_path_buf(),
                    kind: FileKind::Palette,
                    detail: format!("id {} is used by both \"{prev}\" and \"{}\"; expected unique ids", c.id, c.name),
                });
            }
            if let Some(prev) = colours.insert(c.color, &c.name) {
                return Err(DataError::Corrupt {
                    path: path.to_path_buf(),
                    kind: FileKind::Palette,
                    detail: format!(
                        "colour {:?} is used by both \"{prev}\" and \"{}\"; expected unique colours",
                        c.color, c.name
                    ),
                });
            }
        }
        Ok(palette)
    }

    /// Number of classes: one more than the largest id.
    pub fn label_nc(&self) -> usize {
        self.classes.iter().map(|c| c.id as usize + 1).max().unwrap_or(0)
    }

    fn lookup(&self) -> HashMap<[u8; 3], u32> {
        self.classes.iter().map(|c| (c.color, c.id)).collect()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("palette serialises");
        std::fs::write(path, text + "\n")
            .map_err(|e| DataError::Write { path: path.to_path_buf(), detail: e.to_string() })
    }
}

/// Decoded PNG samples, before any interpretation.
struct RawPng {
    width: usize,
    height: usize,
    color: png::ColorType,
    depth: u8,
    /// One entry per sample (channel), already unpacked from sub-byte / 16-bit storage.
    samples: Vec<u16>,
}

fn read_bytes(path: &Path, kind: FileKind) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), kind, source })
}

/// The default of [`max_image_pixels`]: 2^25 = 33,554,432 pixels (8192 x 4096).
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 1 << 25;

static MAX_IMAGE_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// The largest image (width x height) that the readers of this module decode; larger files
/// are refused from their header, before any pixel memory is allocated.
pub fn max_image_pixels() -> u64 {
    MAX_IMAGE_PIXELS.load(Ordering::Relaxed)
}

/// Sets [`max_image_pixels`] (the `spade` binary does so from `SPADE_MAX_IMAGE_PIXELS`).
pub fn set_max_image_pixels(pixels: u64) {
    MAX_IMAGE_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

fn check_pixels(path: &Path, kind: FileKind, width: u64, height: u64) -> Result<()> {
    let pixels = width.saturating_mul(height);
    let max = max_image_pixels();
    if pixels > max {
        return Err(DataError::TooLarge { path: path.to_path_buf(), kind, width, height, max });
    }
    Ok(())
}

fn decode_png(path: &Path, kind: FileKind) -> Result<RawPng> {
    decode_png_bytes(&read_bytes(path, kind)?, path, kind)
}

fn decode_png_bytes(bytes: &[u8], path: &Path, kind: FileKind) -> Result<RawPng> {
    let corrupt = |detail: String| DataError::Corrupt { path: path.to_path_buf(), kind, detail };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| corrupt(format!("PNG decoding failed: {e}")))?;
    {
        let info = reader.info();
        check_pixels(path, kind, info.width as u64, info.height as u64)?;
    }
    let size = reader.output_buffer_size().ok_or_else(|| corrupt("PNG image too large".to_string()))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| corrupt(format!("PNG decoding failed: {e}")))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let depth = info.bit_depth as u8;
    let spp = info.color_type.samples();
    let mut samples = Vec::with_capacity(width * height * spp);
    for row in buf.chunks(info.line_size).take(height) {
        match depth {
            8 => samples.extend(row[..width * spp].iter().map(|&v| v as u16)),
            16 => samples.extend(row[..width * spp * 2].chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]]))),
            1 | 2 | 4 => {
                let d = depth as usize;
                let per_byte = 8 / d;
                let mask = (1u16 << d) - 1;
                for i in 0..width * spp {
                    let byte = row[i / per_byte] as u16;
                    let shift = 8 - d * (i % per_byte + 1);
                    samples.push((byte >> shift) & mask);
                }
            }
            _ => return Err(corrupt(format!("invalid PNG bit depth {depth}"))),
        }
    }
    Ok(RawPng { width, height, color: info.color_type, depth, samples })
}

fn format_name(raw: &RawPng) -> String {
    let c = match raw.color {
        png::ColorType::Grayscale => "grayscale",
        png::ColorType::Rgb => "RGB",
        png::ColorType::Indexed => "palette-indexed",
        png::ColorType::GrayscaleAlpha => "grayscale+alpha",
        png::ColorType::Rgba => "RGBA",
    };
    format!("{}-bit {c}", raw.depth)
}

/// Reads a label PNG into raw ids (before any dataset mapping).
///
/// Accepts grayscale (any depth; 16-bit too), grayscale+alpha (alpha ignored) and
/// palette-indexed PNGs (the indices are the ids). RGB/RGBA PNGs are accepted only with a
/// `palette`: each colour is looked up, and a colour not in it is an error.
pub fn read_label_png(path: &Path, palette: Option<&Palette>) -> Result<LabelMap> {
    decode_label_png(&read_bytes(path, FileKind::Label)?, path, palette)
}

/// [`read_label_png`] of a PNG already in memory (an upload); `name` is what errors call it.
pub fn decode_label_png(bytes: &[u8], name: &Path, palette: Option<&Palette>) -> Result<LabelMap> {
    let path = name;
    let raw = decode_png_bytes(bytes, path, FileKind::Label)?;
    let (w, h) = (raw.width, raw.height);
    let data: Vec<u32> = match raw.color {
        png::ColorType::Grayscale | png::ColorType::Indexed => raw.samples.iter().map(|&v| v as u32).collect(),
        png::ColorType::GrayscaleAlpha => raw.samples.iter().step_by(2).map(|&v| v as u32).collect(),
        png::ColorType::Rgb | png::ColorType::Rgba => {
            let Some(palette) = palette else {
                return Err(DataError::Unsupported {
                    path: path.to_path_buf(),
                    kind: FileKind::Label,
                    format: format_name(&raw),
                    expected: "8/16-bit grayscale or palette-indexed ids (RGB colour-coded labels need a palette: classes.json)".into(),
                });
            };
            if raw.depth != 8 {
                return Err(DataError::Unsupported {
                    path: path.to_path_buf(),
                    kind: FileKind::Label,
                    format: format_name(&raw),
                    expected: "8-bit RGB for colour-coded labels".into(),
                });
            }
            let lookup = palette.lookup();
            let spp = raw.color.samples();
            let mut out = Vec::with_capacity(w * h);
            let mut last: ([u8; 3], u32) = ([0; 3], u32::MAX);
            for (i, px) in raw.samples.chunks_exact(spp).enumerate() {
                let rgb = [px[0] as u8, px[1] as u8, px[2] as u8];
                if rgb != last.0 || last.1 == u32::MAX {
                    match lookup.get(&rgb) {
                        Some(&id) => last = (rgb, id),
                        None => {
                            return Err(DataError::UnknownColour {
                                path: path.to_path_buf(),
                                rgb,
                                x: i % w,
                                y: i / w,
                                count: lookup.len(),
                            })
                        }
                    }
                }
                out.push(last.1);
            }
            out
        }
    };
    Ok(LabelMap { height: h, width: w, data })
}

/// Reads an instance-id PNG: grayscale of any depth (8-bit COCO, 16-bit Cityscapes
/// `_instanceIds`), palette indices, or RGB(A) packed as `r << 16 | g << 8 | b`.
pub fn read_instance_png(path: &Path) -> Result<LabelMap> {
    let raw = decode_png(path, FileKind::Instance)?;
    let data: Vec<u32> = match raw.color {
        png::ColorType::Grayscale | png::ColorType::Indexed => raw.samples.iter().map(|&v| v as u32).collect(),
        png::ColorType::GrayscaleAlpha => raw.samples.iter().step_by(2).map(|&v| v as u32).collect(),
        png::ColorType::Rgb | png::ColorType::Rgba => {
            let spp = raw.color.samples();
            raw.samples.chunks_exact(spp).map(|p| (p[0] as u32) << 16 | (p[1] as u32) << 8 | p[2] as u32).collect()
        }
    };
    Ok(LabelMap { height: raw.height, width: raw.width, data })
}

/// Reads a photo (JPEG, PNG, ...) and converts it to 8-bit RGB as PIL's `convert('RGB')` does.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = read_bytes(path, FileKind::Image)?;
    let corrupt = |e: image::ImageError| DataError::Corrupt {
        path: path.to_path_buf(),
        kind: FileKind::Image,
        detail: format!("image decoding failed: {e}"),
    };
    let reader = || image::ImageReader::new(Cursor::new(&bytes[..])).with_guessed_format();
    let (w, h) = reader().map_err(|e| corrupt(image::ImageError::IoError(e)))?.into_dimensions().map_err(corrupt)?;
    check_pixels(path, FileKind::Image, w as u64, h as u64)?;
    let mut r = reader().map_err(|e| corrupt(image::ImageError::IoError(e)))?;
    let mut limits = image::Limits::default();
    // 8 bytes per pixel (16-bit RGBA) for the decoder, and the RGB copy.
    limits.max_alloc = Some(max_image_pixels().saturating_mul(8).max(1 << 26));
    r.limits(limits);
    let img = r.decode().map_err(corrupt)?;
    let rgb = img.to_rgb8();
    Ok(RgbImage { width: rgb.width() as usize, height: rgb.height() as usize, data: rgb.into_raw() })
}

/// Reads only the size of an image file from its header (cheap).
pub fn image_size(path: &Path) -> Result<(usize, usize)> {
    let (w, h) = image::image_dimensions(path).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        kind: FileKind::Image,
        detail: format!("image decoding failed: {e}"),
    })?;
    check_pixels(path, FileKind::Image, w as u64, h as u64)?;
    Ok((w as usize, h as usize))
}

fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Result<()> {
    let werr = |e: String| DataError::Write { path: PathBuf::from(path), detail: e };
    let file = std::fs::File::create(path).map_err(|e| werr(e.to_string()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(color);
    enc.set_depth(depth);
    enc.set_compression(png::Compression::High);
    if let Some(p) = palette {
        enc.set_palette(p);
    }
    let mut writer = enc.write_header().map_err(|e| werr(e.to_string()))?;
    writer.write_image_data(data).map_err(|e| werr(e.to_string()))?;
    writer.finish().map_err(|e| werr(e.to_string()))
}

/// Writes ids as an 8-bit grayscale PNG, or 16-bit when a value exceeds 255.
pub fn write_gray_png(path: &Path, map: &LabelMap) -> Result<()> {
    let max = map.data.iter().copied().max().unwrap_or(0);
    if max > u16::MAX as u32 {
        return Err(DataError::Write {
            path: path.to_path_buf(),
            detail: format!("id {max} does not fit a 16-bit PNG (expected at most 65535)"),
        });
    }
    if max <= 255 {
        let bytes: Vec<u8> = map.data.iter().map(|&v| v as u8).collect();
        write_png(path, map.width, map.height, png::ColorType::Grayscale, png::BitDepth::Eight, None, &bytes)
    } else {
        let bytes: Vec<u8> = map.data.iter().flat_map(|&v| (v as u16).to_be_bytes()).collect();
        write_png(path, map.width, map.height, png::ColorType::Grayscale, png::BitDepth::Sixteen, None, &bytes)
    }
}

/// Writes ids as a palette-indexed PNG (ids are the indices; colours from `palette`), so that
/// the file is both an id map and a colour picture in any viewer.
pub fn write_indexed_png(path: &Path, map: &LabelMap, palette: &Palette) -> Result<()> {
    let n = palette.label_nc().max(1);
    if n > 256 || map.data.iter().any(|&v| v as usize >= 256) {
        return Err(DataError::Write {
            path: path.to_path_buf(),
            detail: "a palette-indexed PNG holds at most 256 ids".into(),
        });
    }
    let mut pal = vec![0u8; 3 * n];
    for c in &palette.classes {
        pal[3 * c.id as usize..3 * c.id as usize + 3].copy_from_slice(&c.color);
    }
    let bytes: Vec<u8> = map.data.iter().map(|&v| v as u8).collect();
    write_png(path, map.width, map.height, png::ColorType::Indexed, png::BitDepth::Eight, Some(pal), &bytes)
}

/// Writes 8-bit RGB (HWC) as a PNG.
pub fn write_rgb_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_png(path, img.width, img.height, png::ColorType::Rgb, png::BitDepth::Eight, None, &img.data)
}

#[cfg(test)]
mod hostile_tests {
    //! Hostile PNGs: huge declared sizes are refused from the header, before any pixel memory
    //! is allocated; truncations and bit flips are errors naming the file.
    use super::*;

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }

    /// A PNG whose header declares `w x h` (depth, colour type) with a tiny IDAT.
    fn png_header_only(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([depth, color, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn huge_declared_labels_are_refused_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        // 16384 x (2^31 - 1) RGBA16 (issue 15), and 30000 x 30000 8-bit gray.
        for (name, w, h, depth, color) in
            [("rgba16.png", 16384, (1u32 << 31) - 1, 16, 6), ("big.png", 30000, 30000, 8, 0)]
        {
            let p = dir.path().join(name);
            std::fs::write(&p, png_header_only(w, h, depth, color)).unwrap();
            for r in [read_label_png(&p, None), read_instance_png(&p)] {
                let e = r.unwrap_err().to_string();
                assert!(e.starts_with(&p.display().to_string()), "{e}");
                assert!(
                    e.contains(&format!("{w}x{h}")) && e.contains("33554432") && e.contains("SPADE_MAX_IMAGE_PIXELS"),
                    "{e}"
                );
            }
            let e = read_image(&p).unwrap_err().to_string();
            assert!(e.starts_with(&p.display().to_string()), "{e}");
            assert!(e.contains("limit") || e.contains("decoding failed"), "{e}");
        }
    }

    #[test]
    fn truncated_and_flipped_labels_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.png");
        let map = LabelMap { width: 7, height: 5, data: (0..35).map(|i| i % 6).collect() };
        write_gray_png(&p, &map).unwrap();
        assert_eq!(read_label_png(&p, None).unwrap(), map);
        let bytes = std::fs::read(&p).unwrap();
        // Cut anywhere before the trailing IEND chunk (its 12 bytes): an error naming the file.
        // A cut inside IEND loses no pixel; the decoder may then return the full map.
        let iend = bytes.len() - 12;
        assert_eq!(&bytes[iend + 4..iend + 8], b"IEND");
        for cut in 0..bytes.len() {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            match read_label_png(&p, None) {
                Err(e) => assert!(e.to_string().starts_with(&p.display().to_string()), "cut {cut}: {e}"),
                Ok(m) => assert!(cut >= iend && m == map, "cut {cut} of {}: read as a valid map", bytes.len()),
            }
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            std::fs::write(&p, &b).unwrap();
            if let Err(e) = read_label_png(&p, None) {
                assert!(e.to_string().starts_with(&p.display().to_string()), "byte {i}: {e}");
            }
        }
    }
}
