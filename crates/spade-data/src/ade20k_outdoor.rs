//! ADE20K-outdoor: the ADE20K subset of the paper's Table 1 (taken from SIMS, Qi et al. 2018),
//! the ADEChallengeData2016 images whose scene category in `sceneCategories.txt` is an outdoor
//! scene.
//!
//! Neither the paper nor SIMS publishes its list of categories. Ours follows the SUN scene
//! hierarchy that ADE20K's scene names come from (SUN / Places categories): its two outdoor
//! branches, "outdoor natural" and "outdoor man-made", as [`OUTDOOR_CATEGORIES`], plus every
//! category whose name says it is outdoor (`*_outdoor`, `*_exterior`). Everything else (the
//! indoor branch, vehicle interiors, and names that are not scenes) is left out. The list is
//! the one place that decides; `datasets/README.md` prints it.
use std::collections::HashMap;
use std::path::Path;

use crate::error::{DataError, FileKind, Result};

/// File of ADEChallengeData2016 that gives each image's scene category
/// (`ADE_train_00000001 airport_terminal` per line).
pub const SCENE_CATEGORIES_FILE: &str = "sceneCategories.txt";

/// The outdoor scene categories (SUN's outdoor natural and outdoor man-made branches), with
/// ADE20K's spelling (lower case, `_` between words). Categories named `*_outdoor` or
/// `*_exterior` are outdoor too (see [`is_outdoor`]).
pub const OUTDOOR_CATEGORIES: &[&str] = &[
    // Outdoor natural.
    "badlands",
    "bamboo_forest",
    "bayou",
    "beach",
    "butte",
    "canyon",
    "cavern_outdoor",
    "cliff",
    "coast",
    "corn_field",
    "creek",
    "crevasse",
    "desert_sand",
    "desert_vegetation",
    "estuary",
    "field_cultivated",
    "field_wild",
    "fjord",
    "forest_broadleaf",
    "forest_needleleaf",
    "forest_path",
    "forest_road",
    "geyser",
    "glacier",
    "grotto",
    "hayfield",
    "heath",
    "hill",
    "hot_spring",
    "ice_floe",
    "ice_shelf",
    "iceberg",
    "islet",
    "jungle",
    "lagoon",
    "lake_natural",
    "marsh",
    "meadow",
    "mountain",
    "mountain_path",
    "mountain_snowy",
    "ocean",
    "orchard",
    "pasture",
    "pond",
    "rainforest",
    "rice_paddy",
    "river",
    "rock_arch",
    "sandbar",
    "savanna",
    "sea_cliff",
    "sky",
    "snowfield",
    "swamp",
    "tundra",
    "valley",
    "vineyard",
    "volcano",
    "waterfall",
    "waterfall_block",
    "waterfall_fan",
    "waterfall_plunge",
    "wave",
    "wheat_field",
    // Outdoor man-made.
    "airfield",
    "airport",
    "alley",
    "amphitheater",
    "amusement_park",
    "aqueduct",
    "arch",
    "athletic_field_outdoor",
    "backyard",
    "badminton_court_outdoor",
    "bazaar_outdoor",
    "boardwalk",
    "boat_deck",
    "boathouse",
    "botanical_garden",
    "bridge",
    "building_facade",
    "bullring",
    "bus_stop",
    "cabin_outdoor",
    "campsite",
    "campus",
    "canal_natural",
    "canal_urban",
    "castle",
    "cemetery",
    "chalet",
    "construction_site",
    "corral",
    "cottage",
    "cottage_garden",
    "courthouse",
    "courtyard",
    "crosswalk",
    "dam",
    "dike",
    "dock",
    "downtown",
    "driveway",
    "excavation",
    "fairway",
    "farm",
    "ferry",
    "field_road",
    "fire_escape",
    "football_field",
    "formal_garden",
    "fountain",
    "garden",
    "gas_station",
    "gazebo_exterior",
    "golf_course",
    "harbor",
    "highway",
    "house",
    "housing_estate",
    "hut",
    "igloo",
    "industrial_area",
    "japanese_garden",
    "junkyard",
    "kasbah",
    "landfill",
    "lawn",
    "levee",
    "lighthouse",
    "lock_chamber",
    "mansion",
    "marina",
    "medina",
    "motel",
    "oast_house",
    "office_building",
    "oil_refinery",
    "pagoda",
    "palace",
    "park",
    "parking_lot",
    "patio",
    "pavilion",
    "pier",
    "playground",
    "plaza",
    "porch",
    "promenade",
    "putting_green",
    "racecourse",
    "raceway",
    "railroad_track",
    "ranch",
    "residential_neighborhood",
    "river_bank",
    "ruin",
    "runway",
    "schoolyard",
    "shopfront",
    "ski_resort",
    "ski_slope",
    "skyscraper",
    "slum",
    "soccer_field",
    "stadium_baseball",
    "stadium_football",
    "street",
    "temple_east_asia",
    "temple_south_asia",
    "topiary_garden",
    "tower",
    "tree_farm",
    "viaduct",
    "village",
    "vegetable_garden",
    "water_park",
    "water_tower",
    "wharf",
    "wind_farm",
    "windmill",
    "yard",
    "zen_garden",
];

/// Whether a scene category of `sceneCategories.txt` is outdoor.
pub fn is_outdoor(category: &str) -> bool {
    let c = category.trim().to_ascii_lowercase().replace(['/', ' ', '-'], "_");
    c.ends_with("_outdoor") || c.ends_with("_exterior") || OUTDOOR_CATEGORIES.contains(&c.as_str())
}

/// Reads `sceneCategories.txt`: image stem -> scene category. A missing file or a malformed
/// line is an error naming the file (and the line).
pub fn read_scene_categories(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Config {
                option: "dataset_mode",
                value: "ade20k_outdoor".into(),
                expected: format!(
                    "{} (ADEChallengeData2016's scene categories, which select the outdoor images)",
                    path.display()
                ),
            }
        } else {
            DataError::Io { path: path.to_path_buf(), kind: FileKind::Label, source }
        }
    })?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(stem), Some(cat), None) => {
                map.insert(stem.to_string(), cat.to_string());
            }
            _ => {
                return Err(DataError::Corrupt {
                    path: path.to_path_buf(),
                    kind: FileKind::Label,
                    detail: format!("line {}: {line:?}: expected `<image name> <scene category>`", i + 1),
                })
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outdoor_rule() {
        for c in ["street", "mountain_snowy", "church_outdoor", "gazebo_exterior", "highway", "coast"] {
            assert!(is_outdoor(c), "{c}");
        }
        for c in ["bedroom", "bathroom", "kitchen", "church_indoor", "living_room", "airport_terminal", "misc"] {
            assert!(!is_outdoor(c), "{c}");
        }
        // No category is listed twice.
        let mut v = OUTDOOR_CATEGORIES.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), OUTDOOR_CATEGORIES.len());
    }

    #[test]
    fn reads_and_rejects() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(SCENE_CATEGORIES_FILE);
        std::fs::write(&p, "ADE_train_00000001 airport_terminal\nADE_train_00000002 street\n\n").unwrap();
        let m = read_scene_categories(&p).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["ADE_train_00000002"], "street");
        std::fs::write(&p, "ADE_train_00000001\n").unwrap();
        let e = read_scene_categories(&p).unwrap_err().to_string();
        assert!(e.contains(SCENE_CATEGORIES_FILE) && e.contains("line 1"), "{e}");
        let e = read_scene_categories(&d.path().join("none.txt")).unwrap_err().to_string();
        assert!(e.contains("none.txt"), "{e}");
    }
}
