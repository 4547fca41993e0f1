//! Writes a contact sheet of synthetic (label, image) pairs:
//! `cargo run -p spade-data --release --example contact_sheet -- [OUT.png] [SIZE] [COUNT] [SEED]`
//! (default `datasets/synthetic_contact_sheet.png`, 96 px, 12 pairs, seed 0). Pairs are laid
//! out 4 per row, label (palette colours) left of its image.
use spade_data::pngio::write_rgb_png;
use spade_data::synthetic::{colorize, generate};
use spade_data::RgbImage;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().cloned().unwrap_or_else(|| "datasets/synthetic_contact_sheet.png".into());
    let size: usize = args.get(1).map_or(96, |s| s.parse().expect("SIZE: pixels"));
    let count: usize = args.get(2).map_or(12, |s| s.parse().expect("COUNT: pairs"));
    let seed: u64 = args.get(3).map_or(0, |s| s.parse().expect("SEED: integer"));
    let per_row = 4;
    let gap = 4;
    let rows = count.div_ceil(per_row);
    let (w, h) = (per_row * (2 * size + gap) + gap, rows * (size + gap) + gap);
    let mut sheet = RgbImage { width: w, height: h, data: vec![255; w * h * 3] };
    let mut blit = |img: &RgbImage, x0: usize, y0: usize| {
        for y in 0..img.height {
            let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
            let dst = ((y0 + y) * w + x0) * 3;
            sheet.data[dst..dst + src.len()].copy_from_slice(src);
        }
    };
    for i in 0..count {
        let s = generate(seed, i as u64, size, size);
        let (r, c) = (i / per_row, i % per_row);
        let x0 = gap + c * (2 * size + gap);
        let y0 = gap + r * (size + gap);
        blit(&colorize(&s.label), x0, y0);
        blit(&s.image, x0 + size, y0);
        println!("{i}: {}", s.style.name());
    }
    write_rgb_png(std::path::Path::new(&out), &sheet).expect("write the contact sheet");
    println!("wrote {out} ({w}x{h})");
}
