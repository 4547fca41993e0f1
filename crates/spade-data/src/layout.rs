//! Finding (label, image, instance) triples in each dataset's on-disk layout.
//!
//! Files are paired by key (the file stem; Cityscapes: `city_seq_frame`), so that a missing
//! partner is reported by name instead of silently shifting the reference's sorted lists.
//! Pairs are in natural-sort order of the label paths, as the reference's `natural_sort`.
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{DatasetMode, Phase, ResolvedConfig};
use crate::error::{DataError, FileKind, Result};

/// The reference's image extensions (`data/image_folder.py`).
pub const IMG_EXTENSIONS: &[&str] =
    &[".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".ppm", ".PPM", ".bmp", ".BMP", ".tiff", ".webp"];

/// One sample's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPaths {
    pub label: PathBuf,
    pub image: PathBuf,
    pub instance: Option<PathBuf>,
}

/// The complete pairs found, and the files that lack a partner.
#[derive(Debug, Default)]
pub struct Listing {
    pub pairs: Vec<PairPaths>,
    pub problems: Vec<DataError>,
}

fn is_image_file(name: &str) -> bool {
    IMG_EXTENSIONS.iter().any(|e| name.ends_with(e))
}

/// Natural ordering: digit runs compare as numbers.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut ai, mut bi) = (a.char_indices().peekable(), b.char_indices().peekable());
    loop {
        match (ai.peek().copied(), bi.peek().copied()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some((_, ca)), Some((_, cb))) if ca.is_ascii_digit() && cb.is_ascii_digit() => {
                let take = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
                    let mut s = String::new();
                    while let Some(&(_, c)) = it.peek() {
                        if !c.is_ascii_digit() {
                            break;
                        }
                        s.push(c);
                        it.next();
                    }
                    s
                };
                let (na, nb) = (take(&mut ai), take(&mut bi));
                let (ta, tb) = (na.trim_start_matches('0'), nb.trim_start_matches('0'));
                let o = ta.len().cmp(&tb.len()).then(ta.cmp(tb)).then(na.len().cmp(&nb.len()));
                if o != Ordering::Equal {
                    return o;
                }
            }
            (Some((_, ca)), Some((_, cb))) => {
                let o = ca.cmp(&cb);
                if o != Ordering::Equal {
                    return o;
                }
                ai.next();
                bi.next();
            }
        }
    }
}

fn require_dir(dir: &Path, expected: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(DataError::MissingDir { path: dir.to_path_buf(), expected: expected.to_string() })
    }
}

/// Image files of a directory (recursively when asked), natural-sorted.
fn list_files(dir: &Path, recursive: bool, kind: FileKind) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| DataError::Io { path: d.clone(), kind, source })?;
        for entry in entries {
            let entry = entry.map_err(|source| DataError::Io { path: d.clone(), kind, source })?;
            let path = entry.path();
            if path.is_dir() {
                if recursive {
                    stack.push(path);
                }
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(is_image_file) {
                out.push(path);
            }
        }
    }
    out.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(out)
}

fn stem_of(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Keys files by `key`; the first file with a key wins (natural order).
fn by_key(files: Vec<PathBuf>, key: &dyn Fn(&Path) -> String) -> BTreeMap<String, PathBuf> {
    let mut m = BTreeMap::new();
    for f in files {
        m.entry(key(&f)).or_insert(f);
    }
    m
}

/// One group of directories paired by key (e.g. `train_label`, `train_img`, `train_inst`).
struct Group {
    labels: Vec<PathBuf>,
    images: Vec<PathBuf>,
    instances: Option<Vec<PathBuf>>,
    key: fn(&Path) -> String,
    /// How to name a missing partner of each kind from its key.
    expect_label: Box<dyn Fn(&str) -> String>,
    expect_image: Box<dyn Fn(&str) -> String>,
    expect_instance: Box<dyn Fn(&str) -> String>,
}

fn pair_group(g: Group, out: &mut Listing) {
    let images = by_key(g.images, &g.key);
    let instances = g.instances.map(|v| by_key(v, &g.key));
    let mut used_images = std::collections::BTreeSet::new();
    let mut used_instances = std::collections::BTreeSet::new();
    for label in g.labels {
        let k = (g.key)(&label);
        let image = images.get(&k);
        let instance = instances.as_ref().map(|m| m.get(&k));
        let mut ok = true;
        if image.is_none() {
            out.problems.push(DataError::MissingPartner {
                path: label.clone(),
                kind: FileKind::Image,
                expected: (g.expect_image)(&k),
            });
            ok = false;
        }
        if let Some(None) = instance {
            out.problems.push(DataError::MissingPartner {
                path: label.clone(),
                kind: FileKind::Instance,
                expected: (g.expect_instance)(&k),
            });
            ok = false;
        }
        used_images.insert(k.clone());
        used_instances.insert(k);
        if ok {
            out.pairs.push(PairPaths {
                label,
                image: image.cloned().unwrap_or_default(),
                instance: instance.flatten().cloned(),
            });
        }
    }
    let mut orphans: Vec<&PathBuf> = images.iter().filter(|(k, _)| !used_images.contains(*k)).map(|(_, p)| p).collect();
    if let Some(m) = &instances {
        orphans.extend(m.iter().filter(|(k, _)| !used_instances.contains(*k)).map(|(_, p)| p));
    }
    for p in orphans {
        out.problems.push(DataError::MissingPartner {
            path: p.clone(),
            kind: FileKind::Label,
            expected: (g.expect_label)(&(g.key)(p)),
        });
    }
}

fn stem_key(p: &Path) -> String {
    stem_of(p)
}

/// Cityscapes pairs by the first three `_` fields of the name: `city_seq_frame`.
fn cityscapes_key(p: &Path) -> String {
    let name = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    name.split('_').take(3).collect::<Vec<_>>().join("_")
}

fn png_in(dir: &Path) -> Box<dyn Fn(&str) -> String> {
    let dir = dir.to_path_buf();
    Box::new(move |k| dir.join(format!("{k}.png")).display().to_string())
}

fn any_image_in(dir: &Path) -> Box<dyn Fn(&str) -> String> {
    let dir = dir.to_path_buf();
    Box::new(move |k| format!("an image {k}.<jpg|jpeg|png|...> in {}", dir.display()))
}

/// The COCO-Stuff layout found under a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CocoLayout {
    /// `{split}_img/`, `{split}_label/`, `{split}_inst/` (the reference's sample).
    Sample,
    /// `{split}2017/` + `stuffthingmaps_trainval2017/{split}2017/`, instances in `{split}_inst/`.
    Official,
}

pub fn coco_layout(root: &Path, phase: Phase) -> Option<CocoLayout> {
    let s = phase.name();
    if root.join(format!("{s}_label")).is_dir() {
        Some(CocoLayout::Sample)
    } else if root.join("stuffthingmaps_trainval2017").is_dir() {
        Some(CocoLayout::Official)
    } else {
        None
    }
}

/// The ADE20K root: `<root>/ADEChallengeData2016` when present, else `<root>`.
fn ade_root(root: &Path) -> PathBuf {
    let inner = root.join("ADEChallengeData2016");
    if inner.is_dir() {
        inner
    } else {
        root.to_path_buf()
    }
}

/// Lists the pairs of a file-based dataset. Returns `Err` when the layout itself is absent
/// (a required directory is missing); files without partners are `problems`.
pub fn list_pairs(cfg: &ResolvedConfig) -> Result<Listing> {
    let root = &cfg.dataroot;
    let split = cfg.phase.name();
    let want_inst = !cfg.no_instance;
    let mut out = Listing::default();
    match cfg.dataset_mode {
        DatasetMode::Coco => match coco_layout(root, cfg.phase) {
            Some(CocoLayout::Sample) => {
                let mut suffixes = vec![""];
                if cfg.is_train && !cfg.coco_no_portraits {
                    suffixes.push("_portrait");
                }
                for suffix in suffixes {
                    let ld = root.join(format!("{split}_label{suffix}"));
                    if suffix == "_portrait" && !ld.is_dir() {
                        continue;
                    }
                    let id = root.join(format!("{split}_img{suffix}"));
                    let nd = root.join(format!("{split}_inst{suffix}"));
                    require_dir(&id, &format!("the COCO-Stuff image folder {split}_img{suffix}/"))?;
                    if want_inst {
                        require_dir(
                            &nd,
                            &format!("the COCO-Stuff instance folder {split}_inst{suffix}/, or set no_instance"),
                        )?;
                    }
                    let g = Group {
                        labels: list_files(&ld, false, FileKind::Label)?,
                        images: list_files(&id, false, FileKind::Image)?,
                        instances: if want_inst {
                            Some(list_files(&nd, false, FileKind::Instance)?)
                        } else {
                            None
                        },
                        key: stem_key,
                        expect_label: png_in(&ld),
                        expect_image: any_image_in(&id),
                        expect_instance: png_in(&nd),
                    };
                    pair_group(g, &mut out);
                }
            }
            Some(CocoLayout::Official) => {
                let ld = root.join("stuffthingmaps_trainval2017").join(format!("{split}2017"));
                let id = root.join(format!("{split}2017"));
                let nd = root.join(format!("{split}_inst"));
                require_dir(&ld, &format!("the COCO-Stuff label folder stuffthingmaps_trainval2017/{split}2017/"))?;
                require_dir(&id, &format!("the COCO image folder {split}2017/"))?;
                if want_inst {
                    require_dir(
                        &nd,
                        &format!("the COCO-Stuff instance folder {split}_inst/ (made by the reference's coco_generate_instance_map.py), or set no_instance"),
                    )?;
                }
                let g = Group {
                    labels: list_files(&ld, false, FileKind::Label)?,
                    images: list_files(&id, false, FileKind::Image)?,
                    instances: if want_inst {
                        Some(list_files(&nd, false, FileKind::Instance)?)
                    } else {
                        None
                    },
                    key: stem_key,
                    expect_label: png_in(&ld),
                    expect_image: any_image_in(&id),
                    expect_instance: png_in(&nd),
                };
                pair_group(g, &mut out);
            }
            None => {
                return Err(DataError::MissingDir {
                    path: root.join(format!("{split}_label")),
                    expected: format!(
                        "a COCO-Stuff root with {split}_label/, {split}_img/, {split}_inst/ or with {split}2017/ and stuffthingmaps_trainval2017/{split}2017/"
                    ),
                })
            }
        },
        DatasetMode::Ade20k | DatasetMode::Ade20kOutdoor => {
            let base = ade_root(root);
            let sub = if cfg.phase == Phase::Train { "training" } else { "validation" };
            let ld = base.join("annotations").join(sub);
            let id = base.join("images").join(sub);
            require_dir(&ld, &format!("the ADE20K label folder ADEChallengeData2016/annotations/{sub}/"))?;
            require_dir(&id, &format!("the ADE20K image folder ADEChallengeData2016/images/{sub}/"))?;
            let g = Group {
                labels: list_files(&ld, false, FileKind::Label)?,
                images: list_files(&id, false, FileKind::Image)?,
                instances: None,
                key: stem_key,
                expect_label: png_in(&ld),
                expect_image: any_image_in(&id),
                expect_instance: png_in(&ld),
            };
            pair_group(g, &mut out);
            if cfg.dataset_mode == DatasetMode::Ade20kOutdoor {
                let file = base.join(crate::ade20k_outdoor::SCENE_CATEGORIES_FILE);
                let scenes = crate::ade20k_outdoor::read_scene_categories(&file)?;
                let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                out.pairs.retain(|p| scenes.get(&stem(&p.image)).is_some_and(|c| crate::ade20k_outdoor::is_outdoor(c)));
            }
        }
        DatasetMode::Cityscapes => {
            let gd = root.join("gtFine").join(split);
            let id = root.join("leftImg8bit").join(split);
            require_dir(&gd, &format!("the Cityscapes label folder gtFine/{split}/<city>/"))?;
            require_dir(&id, &format!("the Cityscapes image folder leftImg8bit/{split}/<city>/"))?;
            let all = list_files(&gd, true, FileKind::Label)?;
            let name = |p: &PathBuf| p.to_string_lossy().into_owned();
            let labels: Vec<PathBuf> =
                all.iter().filter(|p| name(p).ends_with("_labelIds.png")).cloned().collect();
            let instances: Vec<PathBuf> =
                all.iter().filter(|p| name(p).ends_with("_instanceIds.png")).cloned().collect();
            let city_of = |k: &str| k.split('_').next().unwrap_or("").to_string();
            let (gd2, gd3, id2) = (gd.clone(), gd.clone(), id.clone());
            let g = Group {
                labels,
                images: list_files(&id, true, FileKind::Image)?,
                instances: want_inst.then_some(instances),
                key: cityscapes_key,
                expect_label: Box::new(move |k| {
                    gd2.join(city_of(k)).join(format!("{k}_gtFine_labelIds.png")).display().to_string()
                }),
                expect_image: Box::new(move |k| {
                    id2.join(city_of(k)).join(format!("{k}_leftImg8bit.png")).display().to_string()
                }),
                expect_instance: Box::new(move |k| {
                    gd3.join(city_of(k)).join(format!("{k}_gtFine_instanceIds.png")).display().to_string()
                }),
            };
            pair_group(g, &mut out);
        }
        DatasetMode::Custom => {
            let ld = cfg.label_dir.clone().unwrap_or_else(|| root.join("labels"));
            let id = cfg.image_dir.clone().unwrap_or_else(|| root.join("images"));
            require_dir(&ld, "the label folder (label_dir, default <dataroot>/labels/)")?;
            require_dir(&id, "the image folder (image_dir, default <dataroot>/images/)")?;
            let nd = cfg.instance_dir.clone().unwrap_or_else(|| root.join("instances"));
            if want_inst {
                require_dir(
                    &nd,
                    "the instance folder (instance_dir, default <dataroot>/instances/), or set no_instance",
                )?;
            }
            let g = Group {
                labels: list_files(&ld, false, FileKind::Label)?,
                images: list_files(&id, false, FileKind::Image)?,
                instances: if want_inst {
                    Some(list_files(&nd, false, FileKind::Instance)?)
                } else {
                    None
                },
                key: stem_key,
                expect_label: png_in(&ld),
                expect_image: any_image_in(&id),
                expect_instance: png_in(&nd),
            };
            pair_group(g, &mut out);
        }
        DatasetMode::Synthetic => {}
    }
    out.pairs.truncate(cfg.max_dataset_size);
    Ok(out)
}
