//! Every on-disk layout, on tiny trees made here, including broken ones.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use spade_data::{
    check, open, ClassInfo, DataError, DatasetConfig, DatasetMode, FileKind, Palette, Phase, PreprocessMode,
};

fn cfg(mode: DatasetMode, root: &Path) -> DatasetConfig {
    DatasetConfig::new(mode, Some(root.to_path_buf()))
}

fn lines(problems: &[DataError]) -> Vec<String> {
    problems.iter().map(|p| p.to_string()).collect()
}

fn p(root: &Path, rel: &str) -> String {
    root.join(rel).display().to_string()
}

#[test]
fn coco_sample_layout_checks_and_loads() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    coco_sample(root, "train", &["a", "b"]);
    coco_sample(root, "val", &["c"]);
    let report = check(&cfg(DatasetMode::Coco, root)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", lines(&report.problems));
    assert_eq!(
        serde_json::to_string(&report).unwrap(),
        r#"{"format":"coco-stuff","split":"train","pairs":2,"label_nc":182,"labels_seen":[0,5,182]}"#
    );
    let mut val = cfg(DatasetMode::Coco, root);
    val.phase = Phase::Val;
    let r = check(&val).unwrap();
    assert_eq!((r.split.as_str(), r.pairs, r.labels_seen.clone()), ("val", 1, vec![0, 182]));

    let mut c = cfg(DatasetMode::Coco, root);
    c.load_size = Some(12);
    c.crop_size = Some(10);
    let ds = open(&c).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.config().semantic_nc(), 182 + 1 + 1);
    let s = ds.load(1, 42).unwrap();
    assert_eq!(s.path, root.join("train_label/b.png"));
    assert_eq!((s.label.width, s.label.height), (10, 10));
    let mut ids: Vec<u32> = s.label.data.clone();
    ids.sort_unstable();
    ids.dedup();
    assert!(ids.iter().all(|v| [5, 182].contains(v)), "ids {ids:?}");
    let inst = s.instance.expect("instances on by default for COCO");
    assert!(inst.data.iter().all(|&v| v == 1 || v == 2));
    let img = s.image.unwrap();
    assert_eq!(img.data.len(), 3 * 10 * 10);
    assert!(img.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    // Same seed, same sample; the loader is a pure function.
    assert_eq!(ds.load(1, 42).unwrap().label, ds.load(1, 42).unwrap().label);
}

#[test]
fn coco_official_layout_with_optional_instances() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    for s in ["000000000009", "000000000025"] {
        gray(&root.join(format!("stuffthingmaps_trainval2017/train2017/{s}.png")), &halves(0, 181));
        jpeg(&root.join(format!("train2017/{s}.jpg")), &photo());
    }
    let c = cfg(DatasetMode::Coco, root);
    assert!(c.resolve().unwrap().no_instance, "no instance maps in the official layout by default");
    let r = check(&c).unwrap();
    assert!(r.problems.is_empty(), "{:?}", lines(&r.problems));
    assert_eq!((r.pairs, r.labels_seen.clone()), (2, vec![0, 181]));
    assert!(open(&c).unwrap().load(0, 0).unwrap().instance.is_none());
    // With generated instance maps in train_inst/, they are used.
    gray(&root.join("train_inst/000000000009.png"), &halves(3, 4));
    let r = check(&c).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: missing instance partner: expected {}",
            p(root, "stuffthingmaps_trainval2017/train2017/000000000025.png"),
            p(root, "train_inst/000000000025.png")
        )]
    );
    assert_eq!(r.pairs, 1);
}

#[test]
fn ade20k_layout_maps_raw_zero_to_dontcare() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("ADEChallengeData2016");
    gray(&base.join("annotations/training/ADE_train_00000001.png"), &halves(0, 1));
    gray(&base.join("annotations/training/ADE_train_00000002.png"), &halves(150, 1));
    jpeg(&base.join("images/training/ADE_train_00000001.jpg"), &photo());
    jpeg(&base.join("images/training/ADE_train_00000002.jpg"), &photo());
    gray(&base.join("annotations/validation/ADE_val_00000001.png"), &halves(3, 3));
    jpeg(&base.join("images/validation/ADE_val_00000001.jpg"), &photo());
    // The root may be the folder above ADEChallengeData2016 or the folder itself.
    for root in [t.path().to_path_buf(), base.clone()] {
        let r = check(&cfg(DatasetMode::Ade20k, &root)).unwrap();
        assert!(r.problems.is_empty(), "{:?}", lines(&r.problems));
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"format":"ade20k","split":"train","pairs":2,"label_nc":150,"labels_seen":[0,149,150]}"#
        );
    }
    let mut c = cfg(DatasetMode::Ade20k, t.path());
    c.phase = Phase::Val;
    let ds = open(&c).unwrap();
    assert!(!ds.config().is_train && !ds.config().preprocess.flip);
    assert_eq!(ds.config().preprocess.load_size, 256, "test-time load size");
    let s = ds.load(0, 0).unwrap();
    assert!(s.instance.is_none(), "ADE20K has no instance maps");
    assert_eq!((s.label.width, s.label.height), (256, 256));
    assert!(s.label.data.iter().all(|&v| v == 2));
}

#[test]
fn ade20k_outdoor_keeps_the_outdoor_scenes() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("ADEChallengeData2016");
    for (i, v) in [(1, 0), (2, 150), (3, 7)] {
        gray(&base.join(format!("annotations/training/ADE_train_0000000{i}.png")), &halves(v, 1));
        jpeg(&base.join(format!("images/training/ADE_train_0000000{i}.jpg")), &photo());
    }
    // Without sceneCategories.txt the subset cannot be chosen: an error naming the file.
    let e = open(&cfg(DatasetMode::Ade20kOutdoor, t.path())).err().unwrap().to_string();
    assert!(e.contains("sceneCategories.txt"), "{e}");
    std::fs::write(
        base.join("sceneCategories.txt"),
        "ADE_train_00000001 bedroom\nADE_train_00000002 street\nADE_train_00000003 church_outdoor\n",
    )
    .unwrap();
    let r = check(&cfg(DatasetMode::Ade20kOutdoor, t.path())).unwrap();
    assert!(r.problems.is_empty(), "{:?}", lines(&r.problems));
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"format":"ade20k-outdoor","split":"train","pairs":2,"label_nc":150,"labels_seen":[0,6,149]}"#
    );
    let ds = open(&cfg(DatasetMode::Ade20kOutdoor, t.path())).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.load(0, 0).unwrap().path, base.join("annotations/training/ADE_train_00000002.png"));
    // The whole ADE20K still has all three.
    assert_eq!(open(&cfg(DatasetMode::Ade20k, t.path())).unwrap().len(), 3);
    assert_eq!("ade20k-outdoor".parse::<DatasetMode>().unwrap(), DatasetMode::Ade20kOutdoor);
}

#[test]
fn cityscapes_layout_reads_16_bit_instance_ids() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let stem = "aachen_000000_000019";
    gray(&root.join(format!("gtFine/train/aachen/{stem}_gtFine_labelIds.png")), &halves(7, 26));
    gray(&root.join(format!("gtFine/train/aachen/{stem}_gtFine_color.png")), &halves(1, 1));
    gray(&root.join(format!("gtFine/train/aachen/{stem}_gtFine_instanceIds.png")), &halves(7, 26001));
    png_rgb(&root.join(format!("leftImg8bit/train/aachen/{stem}_leftImg8bit.png")), &photo());
    // A second city with its label only.
    gray(&root.join("gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png"), &halves(7, 7));
    gray(&root.join("gtFine/train/bremen/bremen_000000_000019_gtFine_instanceIds.png"), &halves(7, 7));
    let r = check(&cfg(DatasetMode::Cityscapes, root)).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: missing image partner: expected {}",
            p(root, "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png"),
            p(root, "leftImg8bit/train/bremen/bremen_000000_000019_leftImg8bit.png")
        )]
    );
    assert_eq!((r.pairs, r.label_nc, r.labels_seen.clone()), (1, 35, vec![7, 26]));
    std::fs::remove_dir_all(root.join("gtFine/train/bremen")).unwrap();
    let mut c = cfg(DatasetMode::Cityscapes, root);
    c.crop_size = Some(16);
    let ds = open(&c).unwrap();
    let rc = ds.config();
    assert_eq!(
        (rc.preprocess.mode, rc.preprocess.aspect_ratio, rc.contain_dontcare_label),
        (PreprocessMode::Fixed, 2.0, false)
    );
    let s = ds.load(0, 1).unwrap();
    assert_eq!((s.label.width, s.label.height), (16, 8), "fixed: crop_size x crop_size / aspect_ratio");
    let inst = s.instance.unwrap();
    let mut v = inst.data.clone();
    v.sort_unstable();
    v.dedup();
    assert_eq!(v, vec![7, 26001], "16-bit instance ids survive loading");
}

fn two_class_palette() -> Palette {
    Palette {
        classes: vec![
            ClassInfo { id: 0, name: "sky".into(), color: [0, 0, 255] },
            ClassInfo { id: 1, name: "grass".into(), color: [0, 255, 0] },
            ClassInfo { id: 2, name: "road".into(), color: [90, 90, 90] },
        ],
    }
}

#[test]
fn folder_layout_reads_gray_palette_indexed_and_colour_coded_labels() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let pal = two_class_palette();
    gray(&root.join("labels/a.png"), &halves(0, 1));
    indexed(&root.join("labels/b.png"), &halves(2, 1), &pal);
    png_rgb(&root.join("labels/c.png"), &rgb(8, 6, |x, _| if x < 4 { [90, 90, 90] } else { [0, 0, 255] }));
    for s in ["a", "b", "c"] {
        png_rgb(&root.join(format!("images/{s}.png")), &photo());
    }
    // Without classes.json the RGB label cannot be read.
    let mut c = cfg(DatasetMode::Custom, root);
    c.label_nc = Some(3);
    let r = check(&c).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: unsupported label PNG format 8-bit RGB: expected 8/16-bit grayscale or palette-indexed ids (RGB colour-coded labels need a palette: classes.json)",
            p(root, "labels/c.png")
        )]
    );
    // With it (found in the root), label_nc comes from the palette and colours map to ids.
    pal.save(&root.join("classes.json")).unwrap();
    let c = cfg(DatasetMode::Custom, root);
    let r = check(&c).unwrap();
    assert!(r.problems.is_empty(), "{:?}", lines(&r.problems));
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"format":"folder","split":"train","pairs":3,"label_nc":3,"labels_seen":[0,1,2]}"#
    );
    let mut c = cfg(DatasetMode::Custom, root);
    c.preprocess_mode = Some(PreprocessMode::None);
    c.no_flip = true;
    let ds = open(&c).unwrap();
    assert!(ds.config().no_instance, "no instances/ folder: no_instance");
    let s = ds.load(2, 0).unwrap();
    // none: 8x6 -> multiples of 32 (0.25 -> 0 clamps to 32).
    assert_eq!((s.label.width, s.label.height), (32, 32));
    assert_eq!((s.label.get(0, 0), s.label.get(31, 31)), (2, 0));
    let s = ds.load(1, 0).unwrap();
    assert_eq!((s.label.get(0, 0), s.label.get(31, 0)), (2, 1), "palette indices are the ids");

    // An unknown colour names the pixel.
    png_rgb(&root.join("labels/c.png"), &rgb(8, 6, |x, y| if (x, y) == (5, 2) { [1, 2, 3] } else { [0, 0, 255] }));
    let r = check(&cfg(DatasetMode::Custom, root)).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: colour (1, 2, 3) at pixel (x 5, y 2) is not in the palette (3 known colours)",
            p(root, "labels/c.png")
        )]
    );
}

#[test]
fn broken_trees_report_every_problem_with_its_file() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    coco_sample(root, "train", &["a", "b", "c", "d", "e"]);
    // b: label value out of range; c: corrupt PNG; d: image missing; e: instance truncated;
    // f: an image without a label; g: a corrupt JPEG.
    gray(&root.join("train_label/b.png"), &map(8, 6, |x, _| if x == 0 { 200 } else { 3 }));
    let bytes = std::fs::read(root.join("train_label/c.png")).unwrap();
    std::fs::write(root.join("train_label/c.png"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(root.join("train_img/d.jpg")).unwrap();
    std::fs::write(root.join("train_inst/e.png"), b"not a png").unwrap();
    jpeg(&root.join("train_img/f.jpg"), &photo());
    gray(&root.join("train_label/g.png"), &halves(1, 1));
    gray(&root.join("train_inst/g.png"), &halves(1, 1));
    std::fs::write(root.join("train_img/g.jpg"), [0xff, 0xd8, 0xff, 0xe0, 0, 0x10]).unwrap();
    let r = check(&cfg(DatasetMode::Coco, root)).unwrap();
    let got = lines(&r.problems);
    assert_eq!(r.pairs, 5, "a, b, c, e, g are complete pairs");
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(
        got[0],
        format!(
            "{}: missing image partner: expected an image d.<jpg|jpeg|png|...> in {}",
            p(root, "train_label/d.png"),
            p(root, "train_img")
        )
    );
    assert_eq!(
        got[1],
        format!("{}: missing label partner: expected {}", p(root, "train_img/f.jpg"), p(root, "train_label/f.png"))
    );
    assert_eq!(
        got[2],
        format!(
            "{}: label value 200 is outside the valid range 0..=181 or 255 (don't care) for label_nc 182 (6 pixels with invalid values [200])",
            p(root, "train_label/b.png")
        )
    );
    assert!(
        matches!(&r.problems[3], DataError::Corrupt { path, kind: FileKind::Label, .. } if *path == root.join("train_label/c.png")),
        "{}",
        got[3]
    );
    assert!(
        got[3].starts_with(&format!(
            "{}: unreadable or corrupt label file: PNG decoding failed: ",
            p(root, "train_label/c.png")
        )),
        "{}",
        got[3]
    );
    assert!(
        got[4].starts_with(&format!(
            "{}: unreadable or corrupt instance file: PNG decoding failed: ",
            p(root, "train_inst/e.png")
        )),
        "{}",
        got[4]
    );
    assert!(
        got[5].starts_with(&format!(
            "{}: unreadable or corrupt image file: image decoding failed: ",
            p(root, "train_img/g.jpg")
        )),
        "{}",
        got[5]
    );
    // labels_seen still lists what the readable labels hold.
    assert_eq!(r.labels_seen, vec![0, 1, 20, 182]);
    // Opening for training stops at the first problem.
    let err = open(&cfg(DatasetMode::Coco, root)).err().unwrap();
    assert_eq!(err.to_string(), got[0]);
}

#[test]
fn missing_layouts_and_sizes_are_named() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let r = check(&cfg(DatasetMode::Ade20k, root)).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: missing directory: expected the ADE20K label folder ADEChallengeData2016/annotations/training/",
            p(root, "annotations/training")
        )]
    );
    let r = check(&cfg(DatasetMode::Coco, root)).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: missing directory: expected a COCO-Stuff root with train_label/, train_img/, train_inst/ or with train2017/ and stuffthingmaps_trainval2017/train2017/",
            p(root, "train_label")
        )]
    );
    // Size mismatch between label and image.
    coco_sample(root, "train", &["a"]);
    png_rgb(&root.join("train_img/a.jpg"), &rgb(5, 5, |_, _| [0, 0, 0]));
    let r = check(&cfg(DatasetMode::Coco, root)).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!(
            "{}: image size 5x5 differs from the label size 8x6 of {}",
            p(root, "train_img/a.jpg"),
            p(root, "train_label/a.png")
        )]
    );
    // An empty folder dataset.
    std::fs::create_dir_all(root.join("f/labels")).unwrap();
    std::fs::create_dir_all(root.join("f/images")).unwrap();
    let r = check(&cfg(DatasetMode::Custom, &root.join("f"))).unwrap();
    assert_eq!(
        lines(&r.problems),
        vec![format!("{}: no label files found: expected folder label/image pairs for the train split", p(root, "f"))]
    );
}

#[test]
fn same_crop_and_flip_for_label_image_and_instance() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // 4x4 blocks of ids 0..25, an image coloured by id, instances = id + 100.
    let id = |x: usize, y: usize| ((x / 4) + 5 * (y / 4)) as u32;
    let colour = |i: u32| [(i * 10) as u8, 255 - (i * 10) as u8, ((i % 5) * 60) as u8];
    gray(&root.join("labels/s.png"), &map(20, 20, id));
    gray(&root.join("instances/s.png"), &map(20, 20, |x, y| id(x, y) + 100));
    png_rgb(&root.join("images/s.png"), &rgb(20, 20, |x, y| colour(id(x, y))));
    let mut c = cfg(DatasetMode::Custom, root);
    c.label_nc = Some(25);
    c.preprocess_mode = Some(PreprocessMode::Crop);
    c.crop_size = Some(12);
    let ds = open(&c).unwrap();
    let mut outputs = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let s = ds.load(0, seed).unwrap();
        let (l, inst, img) = (&s.label, s.instance.as_ref().unwrap(), s.image.as_ref().unwrap());
        assert_eq!(inst.data.iter().map(|v| v - 100).collect::<Vec<_>>(), l.data, "seed {seed}");
        let n = 144;
        for i in 0..n {
            let want = colour(l.data[i]);
            for ch in 0..3 {
                let got = ((img.data[ch * n + i] * 0.5 + 0.5) * 255.0).round() as u8;
                assert_eq!(got, want[ch], "seed {seed} pixel {i} channel {ch}");
            }
        }
        outputs.insert(l.data.clone());
    }
    assert!(outputs.len() > 10, "crops and flips vary with the seed: {} distinct", outputs.len());
}

#[test]
fn config_deserialises_from_reference_flag_names() {
    let c: DatasetConfig = serde_json::from_str(
        r#"{"dataset_mode": "cityscapes", "dataroot": "/data/cityscapes", "label_nc": 35,
            "preprocess_mode": "fixed", "load_size": 512, "crop_size": 512, "aspect_ratio": 2.0,
            "no_flip": true, "no_instance": false}"#,
    )
    .unwrap();
    assert_eq!(c.dataset_mode, DatasetMode::Cityscapes);
    assert_eq!(c.dataroot, Some(PathBuf::from("/data/cityscapes")));
    let r = c.resolve().unwrap();
    assert!(!r.preprocess.flip && r.is_train && r.semantic_nc() == 36);
    let err = serde_json::from_str::<DatasetConfig>(r#"{"dataset_mode": "coco", "lable_nc": 3}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `lable_nc`"), "{err}");
    let err = DatasetConfig::new(DatasetMode::Coco, None).resolve().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid dataset option dataroot = (none): expected the coco-stuff dataset root directory"
    );
}
