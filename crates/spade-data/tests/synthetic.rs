//! The procedural dataset, the synthetic export, and the batch loader.
use std::collections::BTreeSet;
use std::sync::Arc;

use spade_data::synthetic::{self, generate, Season, Style, TimeOfDay, FIRST_OBJECT_ID, NUM_CLASSES};
use spade_data::{
    check, export_synthetic, open, read_instance_png, read_label_png, BatchLoader, DatasetConfig, DatasetMode,
    LoaderOptions, Phase,
};

#[test]
fn scenes_are_a_pure_function_of_seed_and_index() {
    let a = generate(3, 17, 64, 48);
    assert_eq!(a, generate(3, 17, 64, 48));
    assert_ne!(a.label, generate(3, 18, 64, 48).label);
    assert_ne!(a.label, generate(4, 17, 64, 48).label);
    assert_eq!((a.label.width, a.label.height, a.image.data.len()), (64, 48, 64 * 48 * 3));
}

#[test]
fn the_same_scene_at_any_resolution() {
    // Downsampling the 256 label map by 4 (nearest, pixel centres) gives the 64 one almost
    // everywhere: the layout lives in resolution-free coordinates.
    for index in 0..8 {
        let big = generate(1, index, 256, 256);
        let small = generate(1, index, 64, 64);
        assert_eq!(big.style, small.style);
        let mut same = 0;
        for y in 0..64 {
            for x in 0..64 {
                // The 64-pixel centre (x + 0.5) / 64 lies between big pixels 4x+1 and 4x+2.
                let b1 = big.label.get(4 * x + 1, 4 * y + 1);
                let b2 = big.label.get(4 * x + 2, 4 * y + 2);
                same += (small.label.get(x, y) == b1 || small.label.get(x, y) == b2) as usize;
            }
        }
        assert!(same as f64 / 4096.0 > 0.97, "scene {index}: {same}/4096 pixels agree");
    }
}

#[test]
fn scenes_look_like_landscapes() {
    let n = 120;
    let mut classes = BTreeSet::new();
    let mut styles = BTreeSet::new();
    let mut uniform = 0usize;
    let mut pairs = 0usize;
    let mut with_objects = 0;
    for i in 0..n {
        let s = generate(0, i, 64, 64);
        styles.insert(s.style.index());
        classes.extend(s.label.data.iter().copied());
        // The top row is sky (or sun/cloud/mountain), the bottom row ground.
        let top: BTreeSet<u32> = (0..64).map(|x| s.label.get(x, 0)).collect();
        assert!(top.iter().all(|&c| c <= 4 || c == 9 || c == 12 || c == 13), "scene {i}: top row {top:?}");
        let bottom: BTreeSet<u32> = (0..64).map(|x| s.label.get(x, 63)).collect();
        assert!(bottom.iter().all(|&c| c >= 5), "scene {i}: bottom row {bottom:?}");
        for y in 0..64 {
            for x in 0..63 {
                uniform += (s.label.get(x, y) == s.label.get(x + 1, y)) as usize;
                pairs += 1;
            }
        }
        // Instances: stuff pixels carry their class id, objects ids from 32 on, one class each.
        let mut obj_class = std::collections::BTreeMap::new();
        for (&l, &id) in s.label.data.iter().zip(&s.instance.data) {
            if id < FIRST_OBJECT_ID {
                assert_eq!(id, l, "scene {i}: stuff instance id is the class id");
            } else {
                assert_eq!(*obj_class.entry(id).or_insert(l), l, "scene {i}: object {id} has one class");
                assert!([1, 2, 5, 9, 10, 12, 13].contains(&l), "scene {i}: class {l} is not an object class");
            }
        }
        with_objects += (!obj_class.is_empty()) as usize;
    }
    assert_eq!(classes.len(), NUM_CLASSES, "all classes appear: {classes:?}");
    assert_eq!(styles.len(), 9, "all nine styles appear");
    assert!(uniform as f64 / pairs as f64 > 0.93, "large uniform regions: {uniform}/{pairs}");
    assert!(with_objects as f64 > 0.9 * n as f64, "{with_objects}/{n} scenes have objects");
}

fn mean_rgb(img: &spade_data::RgbImage, label: &spade_data::LabelMap, class: u32) -> Option<[f64; 3]> {
    let mut s = [0f64; 3];
    let mut n = 0;
    for (i, &l) in label.data.iter().enumerate() {
        if l == class {
            for c in 0..3 {
                s[c] += img.data[3 * i + c] as f64;
            }
            n += 1;
        }
    }
    (n > 50).then(|| s.map(|v| v / n as f64))
}

#[test]
fn the_style_changes_the_look() {
    // Mean sky and grass colours per style over many scenes.
    let mut sky = std::collections::HashMap::<Style, Vec<[f64; 3]>>::new();
    let mut grass = std::collections::HashMap::<Season, Vec<[f64; 3]>>::new();
    for i in 0..300 {
        let s = generate(9, i, 48, 48);
        if let Some(m) = mean_rgb(&s.image, &s.label, synthetic::SKY as u32) {
            sky.entry(s.style).or_default().push(m);
        }
        if s.style.time == TimeOfDay::Day {
            if let Some(m) = mean_rgb(&s.image, &s.label, synthetic::GRASS as u32) {
                grass.entry(s.style.season).or_default().push(m);
            }
        }
    }
    let avg = |v: &Vec<[f64; 3]>| {
        let n = v.len() as f64;
        [0, 1, 2].map(|c| v.iter().map(|m| m[c]).sum::<f64>() / n)
    };
    let sky_of = |t, s| avg(&sky[&Style { time: t, season: s }]);
    let day = sky_of(TimeOfDay::Day, Season::Summer);
    let sunset = sky_of(TimeOfDay::Sunset, Season::Summer);
    let night = sky_of(TimeOfDay::Night, Season::Summer);
    assert!(day[2] > day[0] + 60.0, "day sky is blue: {day:?}");
    assert!(sunset[0] > day[0] + 40.0, "sunset sky is redder: {sunset:?} vs {day:?}");
    assert!(night.iter().sum::<f64>() < 0.3 * day.iter().sum::<f64>(), "night sky is dark: {night:?}");
    let summer = avg(&grass[&Season::Summer]);
    let winter = avg(&grass[&Season::Winter]);
    let autumn = avg(&grass[&Season::Autumn]);
    assert!(summer[1] > summer[0] + 40.0, "summer grass is green: {summer:?}");
    assert!(winter[2] > summer[2] + 80.0, "winter grass is frosted: {winter:?}");
    assert!(autumn[0] > summer[0] + 40.0, "autumn grass is yellower: {autumn:?}");
}

#[test]
fn export_writes_the_folder_format_that_check_accepts() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("synth");
    export_synthetic(&dir, 4, 40, 32, 5).unwrap();
    for i in 0..4 {
        let name = format!("{i:06}.png");
        let s = generate(5, i as u64, 40, 32);
        let label = read_label_png(&dir.join("labels").join(&name), None).unwrap();
        assert_eq!(label, s.label, "labels are palette-indexed PNGs of the ids");
        assert_eq!(read_instance_png(&dir.join("instances").join(&name)).unwrap(), s.instance);
        let img = spade_data::read_image(&dir.join("images").join(&name)).unwrap();
        assert_eq!(img, s.image);
    }
    let classes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes["classes"][0], serde_json::json!({"id": 0, "name": "sky", "color": [110, 170, 240]}));
    assert_eq!(classes["classes"].as_array().unwrap().len(), NUM_CLASSES);
    let r = check(&DatasetConfig::new(DatasetMode::Custom, Some(dir.clone()))).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>());
    assert_eq!((r.pairs, r.label_nc), (4, NUM_CLASSES));
    let ds = open(&DatasetConfig::new(DatasetMode::Custom, Some(dir))).unwrap();
    assert!(!ds.config().no_instance, "instances/ is found");
}

fn synthetic_cfg(count: usize, size: usize) -> DatasetConfig {
    let mut c = DatasetConfig::new(DatasetMode::Synthetic, None);
    c.synthetic_count = Some(count);
    c.crop_size = Some(size);
    c
}

#[test]
fn synthetic_dataset_check_and_splits() {
    let r = check(&synthetic_cfg(30, 32)).unwrap();
    assert!(r.problems.is_empty());
    assert_eq!((r.format.as_str(), r.pairs, r.label_nc), ("synthetic", 30, NUM_CLASSES));
    assert!(r.labels_seen.len() >= 12 && r.labels_seen.iter().all(|&v| (v as usize) < NUM_CLASSES));
    let train = open(&synthetic_cfg(5, 32)).unwrap();
    let mut v = synthetic_cfg(5, 32);
    v.phase = Phase::Val;
    let val = open(&v).unwrap();
    assert_ne!(train.load(0, 0).unwrap().label, val.load(0, 0).unwrap().label, "val scenes differ from train");
    assert_eq!(val.load(0, 0).unwrap(), val.load(0, 99).unwrap(), "no flip at test time");
    let mut bad = synthetic_cfg(5, 32);
    bad.label_nc = Some(20);
    assert_eq!(
        bad.resolve().unwrap_err().to_string(),
        "invalid dataset option label_nc = 20: expected 14 for the synthetic dataset (its class count)"
    );
}

#[test]
fn the_loader_is_deterministic_and_covers_each_epoch() {
    let ds = open(&synthetic_cfg(10, 24)).unwrap();
    let mut opts = LoaderOptions::train(4, 11);
    opts.epochs = Some(2);
    let run = |o: LoaderOptions| BatchLoader::new(Arc::clone(&ds), o).unwrap().map(|b| b.unwrap()).collect::<Vec<_>>();
    let a = run(opts.clone());
    assert_eq!(a.len(), 4, "2 epochs x (10 / 4 = 2 batches, last partial dropped)");
    assert_eq!(
        a.iter().map(|b| (b.epoch, b.step, b.len())).collect::<Vec<_>>(),
        vec![(0, 0, 4), (0, 1, 4), (1, 0, 4), (1, 1, 4)]
    );
    // Same seed: the same batches, also on a single thread.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = pool.install(|| run(opts.clone()));
    assert_eq!(a, b);
    // Another seed: another order.
    let mut o2 = opts.clone();
    o2.seed = 12;
    assert_ne!(
        a.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(),
        run(o2).iter().map(|b| b.indices.clone()).collect::<Vec<_>>()
    );
    // Within an epoch no index repeats; epochs are shuffled differently.
    let e0: Vec<usize> = a[0].indices.iter().chain(&a[1].indices).copied().collect();
    let set: BTreeSet<usize> = e0.iter().copied().collect();
    assert_eq!(set.len(), 8);
    assert_ne!(a[0].indices, a[2].indices);
    // Evaluation: dataset order, the last partial batch kept.
    let e = run(LoaderOptions::eval(4));
    assert_eq!(
        e.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(),
        vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
    );
    // Dropping an endless loader early ends its thread.
    let mut endless = BatchLoader::new(Arc::clone(&ds), LoaderOptions::train(2, 0)).unwrap();
    assert_eq!(endless.batches_per_epoch(), 5);
    assert!(endless.next().unwrap().is_ok());
    drop(endless);
}
