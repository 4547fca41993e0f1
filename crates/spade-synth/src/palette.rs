//! Class names and colours (the `classes.json` format of [`spade_data::Palette`]).
//!
//! The built-in palettes live in the repository's `palettes/` folder and are embedded here.
//! COCO-Stuff and ADE20K use the colours of the reference's `util.labelcolormap` (the colours
//! of its results pages); Cityscapes uses the official colours of cityscapesScripts'
//! `labels.py`, where the table repeats a colour the later class gets its blue channel raised
//! by one (the five classes 0-4 are black there, pole and polegroup share one grey, license
//! plate and car one blue) so that every colour names one class.
use spade_data::{ClassInfo, Palette};
use spade_models::NetOptions;

/// A palette that ships with the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    CocoStuff,
    Ade20k,
    Cityscapes,
    Synthetic,
}

impl Builtin {
    pub const ALL: [Builtin; 4] = [Builtin::CocoStuff, Builtin::Ade20k, Builtin::Cityscapes, Builtin::Synthetic];

    /// The file name under `palettes/`, without `.json`.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::CocoStuff => "coco-stuff",
            Builtin::Ade20k => "ade20k",
            Builtin::Cityscapes => "cityscapes",
            Builtin::Synthetic => "synthetic",
        }
    }

    /// Parses a dataset name as `--dataset` and `dataset_mode` spell them.
    pub fn parse(s: &str) -> Option<Builtin> {
        Some(match s {
            "coco" | "coco-stuff" | "coco_stuff" | "cocostuff" => Builtin::CocoStuff,
            "ade20k" | "ade" => Builtin::Ade20k,
            "cityscapes" => Builtin::Cityscapes,
            "synthetic" => Builtin::Synthetic,
            _ => return None,
        })
    }

    /// The embedded `palettes/<name>.json`.
    pub fn json(self) -> &'static str {
        match self {
            Builtin::CocoStuff => include_str!("../../../palettes/coco-stuff.json"),
            Builtin::Ade20k => include_str!("../../../palettes/ade20k.json"),
            Builtin::Cityscapes => include_str!("../../../palettes/cityscapes.json"),
            Builtin::Synthetic => include_str!("../../../palettes/synthetic.json"),
        }
    }

    pub fn palette(self) -> Palette {
        serde_json::from_str(self.json()).expect("the embedded palettes are valid classes.json (tested)")
    }
}

/// Colour `i` of the reference's `util.labelcolormap` (bits of `i + 1` spread over r, g, b).
pub fn labelcolormap(i: u32) -> [u8; 3] {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut id = i + 1;
    for j in 0..7 {
        r ^= ((id & 1) as u8) << (7 - j);
        g ^= (((id >> 1) & 1) as u8) << (7 - j);
        b ^= (((id >> 2) & 1) as u8) << (7 - j);
        id >>= 3;
    }
    [r, g, b]
}

/// `label_nc` classes named `class <id>`, coloured by [`labelcolormap`].
pub fn generated(label_nc: usize) -> Palette {
    Palette {
        classes: (0..label_nc as u32)
            .map(|id| ClassInfo { id, name: format!("class {id}"), color: labelcolormap(id) })
            .collect(),
    }
}

/// The built-in palette for a checkpoint: by its `dataset_mode` (official checkpoints' opt.txt
/// has one), else by its class count (182 COCO-Stuff, 150 ADE20K, 35 Cityscapes, 14 the
/// synthetic dataset). `None` when neither tells.
pub fn builtin_for(opt: &NetOptions) -> Option<Builtin> {
    let by_mode = opt.raw.get("dataset_mode").and_then(|m| Builtin::parse(m.trim()));
    let by_count = match opt.label_nc {
        182 => Some(Builtin::CocoStuff),
        150 => Some(Builtin::Ade20k),
        35 => Some(Builtin::Cityscapes),
        n if n == spade_data::synthetic::NUM_CLASSES => Some(Builtin::Synthetic),
        _ => None,
    };
    by_mode.filter(|b| b.palette().label_nc() == opt.label_nc).or(by_count)
}

/// The palette to show and read labels with for a checkpoint: `given` when there is one
/// (checked to name every class), else [`builtin_for`], else [`generated`].
pub fn for_options(opt: &NetOptions, given: Option<Palette>) -> crate::Result<Palette> {
    match given {
        Some(p) => {
            check_covers(&p, opt.label_nc)?;
            Ok(p)
        }
        None => Ok(builtin_for(opt).map(Builtin::palette).unwrap_or_else(|| generated(opt.label_nc))),
    }
}

/// Checks that `p` has a class for every id `0..label_nc` and none beyond.
pub fn check_covers(p: &Palette, label_nc: usize) -> crate::Result<()> {
    let mut seen = vec![false; label_nc];
    for c in &p.classes {
        match seen.get_mut(c.id as usize) {
            Some(s) => *s = true,
            None => {
                return Err(crate::Error::BadInput(format!(
                    "palette class {} (\"{}\") is beyond the model's {label_nc} classes (ids 0..={})",
                    c.id,
                    c.name,
                    label_nc.saturating_sub(1)
                )))
            }
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(crate::Error::BadInput(format!(
            "the palette has no class {missing}; expected one entry for each of the model's {label_nc} classes"
        )));
    }
    Ok(())
}

/// The colour of each id `0..n` (ids the palette lacks, such as don't care, by
/// [`labelcolormap`]).
pub fn colour_table(p: &Palette, n: usize) -> Vec<[u8; 3]> {
    let mut t: Vec<[u8; 3]> = (0..n as u32).map(labelcolormap).collect();
    for c in &p.classes {
        if let Some(slot) = t.get_mut(c.id as usize) {
            *slot = c.color;
        }
    }
    t
}

/// Colours a map of class ids (row-major, `width` wide) with `p`.
pub fn colorize(ids: &[u32], width: usize, height: usize, p: &Palette) -> image::RgbImage {
    let max = ids.iter().copied().max().unwrap_or(0) as usize;
    let table = colour_table(p, max + 1);
    let mut buf = Vec::with_capacity(ids.len() * 3);
    for &id in ids {
        buf.extend_from_slice(&table[id as usize]);
    }
    image::RgbImage::from_raw(width as u32, height as u32, buf).expect("width * height ids")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_palettes_load_with_unique_ids_and_colours() {
        let want =
            [(Builtin::CocoStuff, 182), (Builtin::Ade20k, 150), (Builtin::Cityscapes, 35), (Builtin::Synthetic, 14)];
        let dir = tempfile::tempdir().unwrap();
        for (b, n) in want {
            // Through spade-data's loader, which rejects repeated ids and colours.
            let path = dir.path().join(format!("{}.json", b.name()));
            std::fs::write(&path, b.json()).unwrap();
            let p = Palette::load(&path).unwrap();
            assert_eq!(p.classes.len(), n, "{}", b.name());
            check_covers(&p, n).unwrap();
        }
        let coco = Builtin::CocoStuff.palette();
        assert_eq!(coco.classes[0].name, "person");
        assert_eq!(coco.classes[156].name, "sky-other");
        assert_eq!(coco.classes[181].name, "wood");
        assert_eq!(Builtin::Ade20k.palette().classes[2].name, "sky");
        assert_eq!(Builtin::Cityscapes.palette().classes[26].name, "car");
        assert_eq!(Builtin::Cityscapes.palette().classes[26].color, [0, 0, 142]);
    }

    #[test]
    fn synthetic_palette_file_matches_the_dataset() {
        let p = Builtin::Synthetic.palette();
        for (i, c) in p.classes.iter().enumerate() {
            assert_eq!(c.id as usize, i);
            assert_eq!(c.name, spade_data::synthetic::CLASS_NAMES[i]);
            assert_eq!(c.color, spade_data::synthetic::PALETTE[i]);
        }
    }

    #[test]
    fn labelcolormap_is_the_references() {
        // util.labelcolormap(N)[:4] of the reference: (128,0,0), (0,128,0), (128,128,0), (0,0,128).
        assert_eq!(labelcolormap(0), [128, 0, 0]);
        assert_eq!(labelcolormap(1), [0, 128, 0]);
        assert_eq!(labelcolormap(2), [128, 128, 0]);
        assert_eq!(labelcolormap(3), [0, 0, 128]);
        assert_eq!(labelcolormap(7), [64, 0, 0]);
        assert_eq!(Builtin::CocoStuff.palette().classes[7].color, [64, 0, 0]);
    }

    #[test]
    fn picks_by_dataset_mode_then_class_count() {
        let mut opt = NetOptions { label_nc: 150, ..Default::default() };
        assert_eq!(builtin_for(&opt), Some(Builtin::Ade20k));
        opt.label_nc = 35;
        opt.raw.insert("dataset_mode".into(), "cityscapes".into());
        assert_eq!(builtin_for(&opt), Some(Builtin::Cityscapes));
        opt.label_nc = 20;
        assert_eq!(builtin_for(&opt), None);
        let p = for_options(&opt, None).unwrap();
        assert_eq!(p.classes.len(), 20);
        assert_eq!(p.classes[19].name, "class 19");
        let short = generated(19);
        let err = for_options(&opt, Some(short)).unwrap_err().to_string();
        assert!(err.contains("no class 19"), "{err}");
    }
}
