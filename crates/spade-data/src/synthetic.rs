//! The built-in procedural dataset: landscape scenes generated from `(seed, index)`.
//!
//! Each scene is laid out in resolution-independent coordinates (`u = x / H`, `v = y / H`, so
//! the same scene at any size, wider images showing more of it): a horizon, sky with a sun or
//! moon and clouds, mountains with snow caps, an optional lake with a sandy shore, grass, an
//! optional road, and objects standing on the ground, drawn far to near (houses with roofs,
//! round or conical trees, bushes, rocks). Label maps therefore have large uniform regions;
//! clouds, the sun, houses, roofs, trees, bushes and rocks are instances.
//!
//! Each class is rendered with its own recognisable texture (gradients, value noise, grain,
//! water ripples, windows, roof tiles, dashed road markings), and a global [`Style`] per sample
//! (time of day x season) changes the look of the whole picture: the sky colours, the light,
//! lit windows and stars at night, autumn leaves, bare trees and frosted grass in winter. The
//! same label map can thus be drawn in nine distinct styles, which gives multimodal and
//! style-guided synthesis something to learn.
//!
//! Instance ids: a stuff pixel's instance id is its class id (0..14); object `k` (0-based, in
//! drawing order) has id `32 + k` (at most 200 objects, so ids fit 8 bits).
use crate::rng::{hash_seed, Rng};
use crate::{LabelMap, RgbImage};

pub const NUM_CLASSES: usize = 14;

pub const SKY: u8 = 0;
pub const CLOUD: u8 = 1;
pub const SUN: u8 = 2;
pub const MOUNTAIN: u8 = 3;
pub const SNOW: u8 = 4;
pub const ROCK: u8 = 5;
pub const WATER: u8 = 6;
pub const SAND: u8 = 7;
pub const GRASS: u8 = 8;
pub const TREE: u8 = 9;
pub const BUSH: u8 = 10;
pub const ROAD: u8 = 11;
pub const HOUSE: u8 = 12;
pub const ROOF: u8 = 13;

/// Class names, indexed by id.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "sky", "cloud", "sun", "mountain", "snow", "rock", "water", "sand", "grass", "tree", "bush", "road", "house",
    "roof",
];

/// Label colours, indexed by id.
pub const PALETTE: [[u8; 3]; NUM_CLASSES] = [
    [110, 170, 240], // sky
    [235, 235, 245], // cloud
    [255, 215, 0],   // sun
    [120, 95, 80],   // mountain
    [200, 255, 255], // snow
    [128, 128, 128], // rock
    [20, 60, 200],   // water
    [230, 200, 120], // sand
    [90, 200, 60],   // grass
    [10, 100, 30],   // tree
    [160, 220, 100], // bush
    [60, 60, 60],    // road
    [220, 80, 60],   // house
    [130, 20, 40],   // roof
];

/// Instance id of the first object.
pub const FIRST_OBJECT_ID: u32 = 32;
const MAX_OBJECTS: usize = 200;

/// Time of day of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeOfDay {
    Day,
    Sunset,
    Night,
}

/// Season of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Season {
    Summer,
    Autumn,
    Winter,
}

/// The global appearance of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Style {
    pub time: TimeOfDay,
    pub season: Season,
}

impl Style {
    pub const ALL: [Style; 9] = {
        let t = [TimeOfDay::Day, TimeOfDay::Sunset, TimeOfDay::Night];
        let s = [Season::Summer, Season::Autumn, Season::Winter];
        [
            Style { time: t[0], season: s[0] },
            Style { time: t[0], season: s[1] },
            Style { time: t[0], season: s[2] },
            Style { time: t[1], season: s[0] },
            Style { time: t[1], season: s[1] },
            Style { time: t[1], season: s[2] },
            Style { time: t[2], season: s[0] },
            Style { time: t[2], season: s[1] },
            Style { time: t[2], season: s[2] },
        ]
    };

    /// 0..9, time-major.
    pub fn index(self) -> usize {
        let t = self.time as usize;
        let s = self.season as usize;
        t * 3 + s
    }

    pub fn name(self) -> String {
        format!("{:?}-{:?}", self.time, self.season).to_lowercase()
    }

    /// The style named `time-season` (as [`Style::name`] writes it), e.g. `day-summer`.
    pub fn from_name(name: &str) -> Option<Style> {
        Style::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a synthetic split draws: the styles of its scenes and how many of them are
/// single-class ("uniform") scenes. The default is the full repertoire: all nine styles and
/// no uniform scenes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SceneOptions {
    /// Draw every scene in this style (the layouts are unchanged); `None`: each scene's own.
    pub style: Option<Style>,
    /// Fraction of scenes, chosen by a hash of `(seed, index)`, whose whole frame is one class
    /// (the class also from the hash), drawn with that class's texture: large uniform regions
    /// for the paper's "wash-away" test (Section 3).
    pub uniform_fraction: f64,
}

/// One generated scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub label: LabelMap,
    pub instance: LabelMap,
    /// 8-bit RGB, HWC.
    pub image: RgbImage,
    pub style: Style,
}

// ---------------------------------------------------------------- noise

#[inline]
fn hash2(x: i32, y: i32, s: u32) -> u32 {
    let mut h =
        (x as u32).wrapping_mul(0x8da6_b343) ^ (y as u32).wrapping_mul(0xd816_3841) ^ s.wrapping_mul(0xcb1a_b31f);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297a_2d39);
    h ^= h >> 15;
    h
}

/// White noise in [0, 1).
#[inline]
fn white(x: i32, y: i32, s: u32) -> f32 {
    (hash2(x, y, s) >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// Smooth value noise in [0, 1), cells of size 1 / `freq`.
#[inline]
fn vnoise(u: f32, v: f32, freq: f32, s: u32) -> f32 {
    let (x, y) = (u * freq, v * freq);
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (xi, yi) = (x0 as i32, y0 as i32);
    let a = white(xi, yi, s);
    let b = white(xi + 1, yi, s);
    let c = white(xi, yi + 1, s);
    let d = white(xi + 1, yi + 1, s);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    top + (bot - top) * sy
}

/// 1D value noise in [0, 1).
#[inline]
fn vnoise1(u: f32, freq: f32, s: u32) -> f32 {
    vnoise(u, 0.5, freq, s)
}

// ---------------------------------------------------------------- scene description

#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A union of ellipses (cx, cy, rx, ry), up to 5.
    Blob { n: usize, e: [[f32; 4]; 5] },
    /// A round tree: crown ellipse(s) above a trunk.
    RoundTree { cx: f32, base: f32, trunk_w: f32, trunk_h: f32, crown: [[f32; 4]; 3] },
    /// A conifer: a triangle above a trunk.
    Conifer { cx: f32, base: f32, trunk_w: f32, trunk_h: f32, half_w: f32, height: f32 },
    /// A house wall (rectangle).
    Wall { x0: f32, x1: f32, top: f32, base: f32, cols: u8, rows: u8 },
    /// A roof: triangle / trapezoid from `top - height` to `top`.
    Roof { cx: f32, top: f32, half_w: f32, height: f32 },
    /// A bush or rock: an ellipse cut at its base.
    Mound { cx: f32, base: f32, rx: f32, ry: f32 },
}

#[derive(Debug, Clone, Copy)]
struct Object {
    class: u8,
    shape: Shape,
    /// Bounding box in normalised units (u0, v0, u1, v1).
    bbox: [f32; 4],
    /// Per-object colour.
    tint: [f32; 3],
    /// Drawn only over these classes (None: over anything).
    only_over_sky: bool,
}

impl Object {
    /// The class at (u, v) if the object covers it (trees have trunk and crown, both `TREE`).
    #[inline]
    fn covers(&self, u: f32, v: f32) -> bool {
        let inside_e = |e: &[f32; 4]| {
            let dx = (u - e[0]) / e[2];
            let dy = (v - e[1]) / e[3];
            dx * dx + dy * dy < 1.0
        };
        match &self.shape {
            Shape::Blob { n, e } => e[..*n].iter().any(inside_e),
            Shape::RoundTree { cx, base, trunk_w, trunk_h, crown } => {
                ((u - cx).abs() < *trunk_w && v < *base && v > base - trunk_h) || crown.iter().any(inside_e)
            }
            Shape::Conifer { cx, base, trunk_w, trunk_h, half_w, height } => {
                let tb = base - trunk_h;
                if (u - cx).abs() < *trunk_w && v < *base && v > tb - 0.01 {
                    return true;
                }
                let apex = tb - height;
                v > apex && v < tb && (u - cx).abs() < half_w * (v - apex) / height
            }
            Shape::Wall { x0, x1, top, base, .. } => u >= *x0 && u < *x1 && v >= *top && v < *base,
            Shape::Roof { cx, top, half_w, height } => {
                let apex = top - height;
                v > apex && v < *top && (u - cx).abs() < half_w * (0.35 + 0.65 * (v - apex) / height)
            }
            Shape::Mound { cx, base, rx, ry } => {
                let dx = (u - cx) / rx;
                let dy = (v - base) / ry;
                v < *base && dx * dx + dy * dy < 1.0
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Layout {
    style: Style,
    horizon: f32,
    aspect: f32,
    mountains: Vec<[f32; 3]>, // (centre u, height, half width)
    mountain_seed: u32,
    snowline: f32,            // height above horizon where snow starts
    lake: Option<(f32, f32)>, // (shore depth below horizon, wobble)
    sand: f32,                // sand band width (0: none)
    road: Option<[f32; 4]>,   // (u at horizon, u at bottom, half width at top, bottom)
    objects: Vec<Object>,
    tex_seed: u32,
}

impl Layout {
    fn ridge(&self, u: f32) -> f32 {
        // Height of the mountain range above the horizon at u.
        let mut h = 0.0f32;
        for m in &self.mountains {
            let t = 1.0 - (u - m[0]).abs() / m[2];
            if t > 0.0 {
                h = h.max(m[1] * t);
            }
        }
        if h > 0.0 {
            h += (vnoise1(u, 18.0, self.mountain_seed) - 0.5) * 0.03
                + (vnoise1(u, 60.0, self.mountain_seed + 1) - 0.5) * 0.012;
        }
        h
    }

    fn shore(&self, u: f32) -> Option<f32> {
        self.lake.map(|(d, wob)| self.horizon + d + (vnoise1(u, 5.0, self.tex_seed + 7) - 0.5) * wob)
    }

    /// Road centre and half width at row v (None above its top).
    fn road_at(&self, v: f32, top: f32) -> Option<(f32, f32)> {
        let r = self.road?;
        if v < top {
            return None;
        }
        let t = (v - top) / (1.0 - top).max(1e-3);
        let c = r[0] + (r[1] - r[0]) * t * t;
        Some((c, r[2] + (r[3] - r[2]) * t))
    }
}

fn choose<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.randint(0, items.len() - 1)]
}

fn make_layout(seed: u64, aspect: f32, style_override: Option<Style>) -> Layout {
    let mut rng = Rng::new(seed);
    let own_style = Style::ALL[rng.randint(0, 8)];
    let style = style_override.unwrap_or(own_style);
    let horizon = rng.range(0.36, 0.6) as f32;
    let mut objects = Vec::new();

    // Sun or moon.
    if rng.chance(0.75) {
        let r = rng.range(0.035, 0.06) as f32;
        let cx = rng.range(0.1, aspect as f64 - 0.1) as f32;
        let lo = if style.time == TimeOfDay::Sunset { horizon as f64 - 0.22 } else { 0.08 };
        let cy = rng.range(lo.max(0.06), (horizon as f64 - 0.1).max(lo.max(0.06) + 0.01)) as f32;
        objects.push(Object {
            class: SUN,
            shape: Shape::Blob { n: 1, e: [[cx, cy, r, r], [0.0; 4], [0.0; 4], [0.0; 4], [0.0; 4]] },
            bbox: [cx - r, cy - r, cx + r, cy + r],
            tint: [1.0; 3],
            only_over_sky: true,
        });
    }
    // Clouds.
    let n_clouds = rng.randint(0, 4);
    for _ in 0..n_clouds {
        let cx = rng.range(0.0, aspect as f64) as f32;
        let cy = rng.range(0.05, (horizon as f64 - 0.08).max(0.08)) as f32;
        let w = rng.range(0.06, 0.16) as f32;
        let n = rng.randint(3, 5);
        let mut e = [[0.0f32; 4]; 5];
        let mut bb = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
        for (i, ei) in e.iter_mut().enumerate().take(n) {
            let ox = (i as f32 / (n - 1) as f32 - 0.5) * 2.0 * w;
            let rx = w * rng.range(0.45, 0.7) as f32;
            let ry = rx * rng.range(0.4, 0.7) as f32;
            let oy = -(1.0 - (ox / w).abs()) * ry * 0.5;
            *ei = [cx + ox, cy + oy, rx, ry];
            bb = [bb[0].min(cx + ox - rx), bb[1].min(cy + oy - ry), bb[2].max(cx + ox + rx), bb[3].max(cy + oy + ry)];
        }
        let g = rng.range(0.85, 1.0) as f32;
        objects.push(Object { class: CLOUD, shape: Shape::Blob { n, e }, bbox: bb, tint: [g; 3], only_over_sky: true });
    }
    // Mountains.
    let mut mountains = Vec::new();
    if rng.chance(0.75) {
        let n = rng.randint(1, 4);
        for _ in 0..n {
            mountains.push([
                rng.range(-0.1, aspect as f64 + 0.1) as f32,
                rng.range(0.08, (horizon as f64 - 0.05).min(0.33)) as f32,
                rng.range(0.2, 0.55) as f32,
            ]);
        }
    }
    let max_h = mountains.iter().map(|m| m[1]).fold(0.0f32, f32::max);
    let snow_frac = match style.season {
        Season::Winter => rng.range(0.35, 0.55),
        _ => rng.range(0.6, 0.85),
    } as f32;
    let snowline = if rng.chance(0.8) { max_h * snow_frac } else { 10.0 };
    // Lake and shore.
    let lake = rng.chance(0.55).then(|| (rng.range(0.05, 0.25) as f32, rng.range(0.0, 0.06) as f32));
    let sand = if lake.is_some() && rng.chance(0.7) { rng.range(0.025, 0.07) as f32 } else { 0.0 };
    let land_top_mid = horizon + lake.map(|l| l.0 + sand + 0.03).unwrap_or(0.0);
    // Road.
    let road = (land_top_mid < 0.8 && rng.chance(0.45)).then(|| {
        let top_u = rng.range(0.2, aspect as f64 - 0.2) as f32;
        let bot_u = top_u + rng.range(-0.5, 0.5) as f32;
        [top_u, bot_u, 0.006, rng.range(0.12, 0.22) as f32]
    });
    let mut layout = Layout {
        style,
        horizon,
        aspect,
        mountains,
        mountain_seed: rng.next_u64() as u32,
        snowline,
        lake,
        sand,
        road,
        objects,
        tex_seed: rng.next_u64() as u32,
    };

    // Ground objects: (base v, object list), sorted far to near.
    let mut ground: Vec<(f32, Vec<Object>)> = Vec::new();
    let land_top = |u: f32, l: &Layout| match l.shore(u) {
        Some(s) => s + l.sand + 0.01,
        None => l.horizon + 0.01,
    };
    let on_road =
        |u: f32, v: f32, l: &Layout| l.road_at(v, land_top(u, l)).is_some_and(|(c, hw)| (u - c).abs() < hw + 0.02);
    let depth = |v: f32, l: &Layout| ((v - l.horizon) / (1.0 - l.horizon)).clamp(0.0, 1.0);
    let place = |rng: &mut Rng, l: &Layout, min_depth: f32, max_depth: f32| -> Option<(f32, f32, f32)> {
        for _ in 0..6 {
            let u = rng.range(0.0, l.aspect as f64) as f32;
            let top = land_top(u, l);
            let v = top + rng.range(0.0, 1.0) as f32 * (1.02 - top);
            let d = depth(v, l);
            if d < min_depth || d > max_depth || on_road(u, v, l) {
                continue;
            }
            return Some((u, v, 0.25 + 1.3 * d));
        }
        None
    };

    // Houses.
    if rng.chance(0.45) {
        for _ in 0..rng.randint(1, 3) {
            if let Some((u, v, s)) = place(&mut rng, &layout, 0.0, 0.5) {
                let w = s * rng.range(0.1, 0.17) as f32;
                let h = w * rng.range(0.55, 0.9) as f32;
                let rh = w * rng.range(0.35, 0.6) as f32;
                let wall_c = choose(
                    &mut rng,
                    &[[0.92, 0.9, 0.85], [0.95, 0.85, 0.6], [0.7, 0.8, 0.9], [0.9, 0.65, 0.55], [0.75, 0.6, 0.45]],
                );
                let roof_c =
                    choose(&mut rng, &[[0.6, 0.18, 0.12], [0.3, 0.27, 0.28], [0.45, 0.25, 0.15], [0.2, 0.3, 0.45]]);
                let (x0, x1, top) = (u - w / 2.0, u + w / 2.0, v - h);
                let ov = w * 0.08;
                ground.push((
                    v,
                    vec![
                        Object {
                            class: HOUSE,
                            shape: Shape::Wall {
                                x0,
                                x1,
                                top,
                                base: v,
                                cols: rng.randint(2, 4) as u8,
                                rows: rng.randint(1, 2) as u8,
                            },
                            bbox: [x0, top, x1, v],
                            tint: wall_c,
                            only_over_sky: false,
                        },
                        Object {
                            class: ROOF,
                            shape: Shape::Roof { cx: u, top: top + 0.002, half_w: w / 2.0 + ov, height: rh },
                            bbox: [x0 - ov, top - rh, x1 + ov, top + 0.002],
                            tint: roof_c,
                            only_over_sky: false,
                        },
                    ],
                ));
            }
        }
    }
    // Trees.
    if rng.chance(0.85) {
        let conifer_p = rng.range(0.0, 1.0);
        for _ in 0..rng.randint(1, 9) {
            if let Some((u, v, s)) = place(&mut rng, &layout, 0.0, 0.9) {
                let size = s * rng.range(0.12, 0.22) as f32;
                let trunk_w = size * 0.07;
                let tint_pick = rng.range(0.0, 1.0) as f32;
                let tint = [tint_pick, rng.range(0.0, 1.0) as f32, 0.0];
                let obj = if rng.chance(conifer_p) {
                    let trunk_h = size * 0.15;
                    let height = size * 0.95;
                    let half_w = size * 0.3;
                    Object {
                        class: TREE,
                        shape: Shape::Conifer { cx: u, base: v, trunk_w, trunk_h, half_w, height },
                        bbox: [u - half_w, v - trunk_h - height, u + half_w, v],
                        tint,
                        only_over_sky: false,
                    }
                } else {
                    let trunk_h = size * 0.35;
                    let r = size * 0.32;
                    let cy = v - trunk_h - r * 0.8;
                    let crown = [
                        [u, cy, r, r * 0.95],
                        [u - r * 0.55, cy + r * 0.3, r * 0.7, r * 0.6],
                        [u + r * 0.55, cy + r * 0.3, r * 0.7, r * 0.6],
                    ];
                    Object {
                        class: TREE,
                        shape: Shape::RoundTree { cx: u, base: v, trunk_w, trunk_h, crown },
                        bbox: [u - 1.25 * r, cy - r, u + 1.25 * r, v],
                        tint,
                        only_over_sky: false,
                    }
                };
                ground.push((v, vec![obj]));
            }
        }
    }
    // Bushes and rocks.
    for (class, n, p) in [(BUSH, 6, 0.6), (ROCK, 4, 0.5)] {
        if rng.chance(p) {
            for _ in 0..rng.randint(1, n) {
                if let Some((u, v, s)) = place(&mut rng, &layout, 0.05, 1.0) {
                    let rx = s * rng.range(0.03, 0.06) as f32;
                    let ry = rx * rng.range(0.5, 0.9) as f32;
                    let g = rng.range(0.85, 1.1) as f32;
                    ground.push((
                        v,
                        vec![Object {
                            class,
                            shape: Shape::Mound { cx: u, base: v, rx, ry },
                            bbox: [u - rx, v - ry, u + rx, v],
                            tint: [g; 3],
                            only_over_sky: false,
                        }],
                    ));
                }
            }
        }
    }
    ground.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, objs) in ground {
        layout.objects.extend(objs);
    }
    layout.objects.truncate(MAX_OBJECTS);
    layout
}

// ---------------------------------------------------------------- rendering

type Rgb = [f32; 3];

#[inline]
fn lerp3(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

#[inline]
fn scale3(a: Rgb, s: f32) -> Rgb {
    [a[0] * s, a[1] * s, a[2] * s]
}

#[inline]
fn mul3(a: Rgb, b: Rgb) -> Rgb {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}

struct Palette {
    sky_top: Rgb,
    sky_horizon: Rgb,
    sun: Rgb,
    cloud: Rgb,
    light: Rgb,
    grass: Rgb,
    tree: [Rgb; 2],
    bush: Rgb,
    windows: Rgb,
}

fn style_palette(style: Style) -> Palette {
    let (sky_top, sky_horizon, sun, cloud, light, windows) = match style.time {
        TimeOfDay::Day => (
            [0.22, 0.45, 0.88],
            [0.68, 0.84, 0.98],
            [1.0, 0.98, 0.85],
            [0.97, 0.97, 0.98],
            [1.0, 1.0, 1.0],
            [0.18, 0.22, 0.3],
        ),
        TimeOfDay::Sunset => (
            [0.52, 0.3, 0.52],
            [1.0, 0.58, 0.28],
            [1.0, 0.62, 0.22],
            [1.0, 0.72, 0.62],
            [0.95, 0.72, 0.55],
            [0.25, 0.18, 0.2],
        ),
        TimeOfDay::Night => (
            [0.01, 0.02, 0.08],
            [0.08, 0.1, 0.24],
            [0.92, 0.92, 0.82],
            [0.22, 0.23, 0.3],
            [0.28, 0.32, 0.5],
            [1.0, 0.85, 0.4],
        ),
    };
    let (grass, tree, bush) = match style.season {
        Season::Summer => ([0.3, 0.6, 0.2], [[0.1, 0.36, 0.1], [0.16, 0.45, 0.12]], [0.26, 0.5, 0.16]),
        Season::Autumn => ([0.55, 0.55, 0.22], [[0.8, 0.35, 0.07], [0.85, 0.65, 0.1]], [0.6, 0.42, 0.14]),
        Season::Winter => ([0.8, 0.83, 0.8], [[0.32, 0.27, 0.22], [0.4, 0.34, 0.28]], [0.55, 0.5, 0.45]),
    };
    Palette { sky_top, sky_horizon, sun, cloud, light, grass, tree, bush, windows }
}

/// The label and instance maps of a scene's layout: stuff per pixel, then objects far to near.
fn scene_labels(layout: &Layout, w: usize, h: usize) -> (Vec<u8>, Vec<u32>) {
    let inv_h = 1.0 / h as f32;
    // 1. Stuff classes per pixel.
    let ridge: Vec<f32> = (0..w).map(|x| layout.ridge((x as f32 + 0.5) * inv_h)).collect();
    let snow_wobble: Vec<f32> =
        (0..w).map(|x| (vnoise1((x as f32 + 0.5) * inv_h, 25.0, layout.tex_seed + 3) - 0.5) * 0.04).collect();
    let shore: Vec<Option<f32>> = (0..w).map(|x| layout.shore((x as f32 + 0.5) * inv_h)).collect();
    let mut label = vec![SKY; w * h];
    let mut inst = vec![0u32; w * h];
    for y in 0..h {
        let v = (y as f32 + 0.5) * inv_h;
        let row = &mut label[y * w..(y + 1) * w];
        for x in 0..w {
            let u = (x as f32 + 0.5) * inv_h;
            let c = if v < layout.horizon {
                let above = layout.horizon - v;
                if above < ridge[x] {
                    if above > layout.snowline + snow_wobble[x] {
                        SNOW
                    } else {
                        MOUNTAIN
                    }
                } else {
                    SKY
                }
            } else {
                let mut c = GRASS;
                let mut land_top = layout.horizon;
                if let Some(s) = shore[x] {
                    land_top = s + layout.sand;
                    if v < s {
                        c = WATER;
                    } else if v < s + layout.sand {
                        c = SAND;
                    }
                }
                if c == GRASS {
                    if let Some((rc, hw)) = layout.road_at(v, land_top) {
                        if (u - rc).abs() < hw {
                            c = ROAD;
                        }
                    }
                }
                c
            };
            row[x] = c;
        }
    }
    for (i, l) in label.iter().enumerate() {
        inst[i] = *l as u32;
    }
    // 2. Objects, far to near.
    for (k, obj) in layout.objects.iter().enumerate() {
        let id = FIRST_OBJECT_ID + k as u32;
        let x0 = ((obj.bbox[0] * h as f32 - 0.5).floor().max(0.0)) as usize;
        let x1 = ((obj.bbox[2] * h as f32 + 0.5).ceil().max(0.0) as usize).min(w);
        let y0 = ((obj.bbox[1] * h as f32 - 0.5).floor().max(0.0)) as usize;
        let y1 = ((obj.bbox[3] * h as f32 + 0.5).ceil().max(0.0) as usize).min(h);
        for y in y0..y1 {
            let v = (y as f32 + 0.5) * inv_h;
            for x in x0..x1 {
                let u = (x as f32 + 0.5) * inv_h;
                let i = y * w + x;
                if obj.only_over_sky && !matches!(label[i], SKY | SUN | CLOUD) {
                    continue;
                }
                if obj.covers(u, v) {
                    label[i] = obj.class;
                    inst[i] = id;
                }
            }
        }
    }

    (label, inst)
}

/// Classes drawn as objects (instances of their own), as opposed to stuff.
fn is_object_class(c: u8) -> bool {
    matches!(c, CLOUD | SUN | TREE | BUSH | ROCK | HOUSE | ROOF)
}

/// Generates scene `index` of the dataset with seed `seed`, `width x height` pixels, from the
/// full repertoire (all styles, no uniform scenes).
pub fn generate(seed: u64, index: u64, width: usize, height: usize) -> Scene {
    generate_with(&SceneOptions::default(), seed, index, width, height)
}

/// The class of scene `index` when it is a uniform scene under `opts`.
pub fn uniform_class(opts: &SceneOptions, seed: u64, index: u64) -> Option<u8> {
    if opts.uniform_fraction <= 0.0 {
        return None;
    }
    let mut rng = Rng::new(hash_seed(&[seed, index, 0x0417]));
    (rng.next_f64() < opts.uniform_fraction).then(|| rng.randint(0, NUM_CLASSES - 1) as u8)
}

/// Generates scene `index` of a split drawn with `opts` (see [`SceneOptions`]).
pub fn generate_with(opts: &SceneOptions, seed: u64, index: u64, width: usize, height: usize) -> Scene {
    let class = uniform_class(opts, seed, index);
    render(opts.style, class, seed, index, width, height)
}

/// A single-class scene: every pixel of class `class`, drawn with its texture in `style`
/// (the layout of scene `index` only places the horizon and seeds the textures).
pub fn generate_uniform(class: u8, style: Option<Style>, seed: u64, index: u64, width: usize, height: usize) -> Scene {
    assert!((class as usize) < NUM_CLASSES, "class {class} out of range");
    render(style, Some(class), seed, index, width, height)
}

/// The object that stands for a whole-frame region of an object class (its tint and shape
/// drive the texture: a wall with windows, a crown without trunk, a cloud's shading).
fn full_frame_object(class: u8, aspect: f32) -> Object {
    let bbox = [0.0, 0.0, aspect, 1.0];
    let e = [[aspect / 2.0, 0.5, aspect, 1.0], [0.0; 4], [0.0; 4], [0.0; 4], [0.0; 4]];
    let (shape, tint) = match class {
        HOUSE => (Shape::Wall { x0: 0.0, x1: aspect, top: 0.0, base: 1.0, cols: 4, rows: 3 }, [0.92, 0.9, 0.85]),
        ROOF => (Shape::Roof { cx: aspect / 2.0, top: 1.0, half_w: aspect, height: 1.0 }, [0.6, 0.18, 0.12]),
        TREE => {
            (Shape::RoundTree { cx: -10.0, base: 0.0, trunk_w: 0.0, trunk_h: 0.0, crown: [e[0], e[0], e[0]] }, [0.5; 3])
        }
        BUSH | ROCK => (Shape::Mound { cx: aspect / 2.0, base: 1.0, rx: aspect, ry: 1.0 }, [1.0; 3]),
        _ => (Shape::Blob { n: 1, e }, [0.95; 3]),
    };
    Object { class, shape, bbox, tint, only_over_sky: false }
}

fn render(style: Option<Style>, uniform: Option<u8>, seed: u64, index: u64, width: usize, height: usize) -> Scene {
    assert!(width > 0 && height > 0, "synthetic scene size must be positive");
    let (w, h) = (width, height);
    let aspect = w as f32 / h as f32;
    let mut layout = make_layout(hash_seed(&[seed, index, 0x5ce7e]), aspect, style);
    if let Some(c) = uniform {
        layout.objects = if is_object_class(c) { vec![full_frame_object(c, aspect)] } else { Vec::new() };
    }
    let inv_h = 1.0 / h as f32;

    let (label, inst) = match uniform {
        Some(c) => {
            let id = if is_object_class(c) { FIRST_OBJECT_ID } else { c as u32 };
            (vec![c; w * h], vec![id; w * h])
        }
        None => scene_labels(&layout, w, h),
    };

    // 3. Render.
    let pal = style_palette(layout.style);
    let night = layout.style.time == TimeOfDay::Night;
    let winter = layout.style.season == Season::Winter;
    let ts = layout.tex_seed;
    let mut img = vec![0u8; w * h * 3];
    for y in 0..h {
        let v = (y as f32 + 0.5) * inv_h;
        let sky_t = (v / layout.horizon).clamp(0.0, 1.0);
        let sky = lerp3(pal.sky_top, pal.sky_horizon, sky_t * sky_t);
        let depth = ((v - layout.horizon) / (1.0 - layout.horizon)).clamp(0.0, 1.0);
        for x in 0..w {
            let u = (x as f32 + 0.5) * inv_h;
            let i = y * w + x;
            let c = label[i];
            let grain = white(x as i32, y as i32, ts) - 0.5;
            let obj = inst[i].checked_sub(FIRST_OBJECT_ID).map(|k| &layout.objects[k as usize]);
            let lit = |col: Rgb| mul3(col, pal.light);
            let col: Rgb = match c {
                SKY => {
                    if night && white(x as i32, y as i32, ts ^ 0x51a5) > 0.996 {
                        [0.95, 0.95, 1.0]
                    } else {
                        sky
                    }
                }
                SUN => {
                    let n = if night { vnoise(u, v, 90.0, ts + 11) * 0.25 } else { 0.0 };
                    scale3(pal.sun, 1.0 - n)
                }
                CLOUD => {
                    let o = obj.expect("cloud pixel has an object");
                    let n = vnoise(u, v, 40.0, ts + 12);
                    let bottom = ((v - o.bbox[1]) / (o.bbox[3] - o.bbox[1]).max(1e-4)).clamp(0.0, 1.0);
                    scale3(pal.cloud, o.tint[0] * (0.92 + 0.12 * n - 0.18 * bottom))
                }
                MOUNTAIN => {
                    let n = vnoise(u, v, 14.0, ts + 13);
                    let n2 = vnoise(u * 3.0, v * 0.6, 40.0, ts + 14);
                    let base = if winter { [0.42, 0.42, 0.48] } else { [0.36, 0.36, 0.42] };
                    let fade = ((layout.horizon - v) * 2.0).clamp(0.0, 0.4);
                    let col = scale3(base, 0.75 + 0.3 * n + 0.15 * n2);
                    lit(lerp3(col, pal.sky_horizon, 0.45 - fade))
                }
                SNOW => {
                    let n = vnoise(u, v, 30.0, ts + 15);
                    lit(scale3([0.93, 0.95, 1.0], 0.9 + 0.1 * n))
                }
                ROCK => {
                    let n = vnoise(u, v, 120.0, ts + 16);
                    let g = obj.map_or(1.0, |o| o.tint[0]);
                    let shade = obj.map_or(1.0, |o| {
                        let t = (v - o.bbox[1]) / (o.bbox[3] - o.bbox[1]).max(1e-4);
                        1.1 - 0.35 * t
                    });
                    let base = if winter { [0.6, 0.6, 0.62] } else { [0.46, 0.44, 0.41] };
                    lit(scale3(base, g * shade * (0.7 + 0.45 * n + 0.2 * grain)))
                }
                WATER => {
                    let n = vnoise(u, v * 4.0, 12.0, ts + 17);
                    let ripple = ((v * 260.0 + n * 9.0).sin() * 0.5 + 0.5) * (0.4 + 0.6 * depth);
                    let deep = if winter { [0.55, 0.65, 0.72] } else { [0.08, 0.25, 0.42] };
                    let refl = lerp3(pal.sky_horizon, deep, (0.35 + depth * 2.0).min(0.85));
                    let col = scale3(refl, 0.88 + 0.22 * ripple);
                    if night {
                        mul3(col, [0.8, 0.85, 1.1])
                    } else {
                        col
                    }
                }
                SAND => {
                    let n = vnoise(u, v, 50.0, ts + 18);
                    lit(scale3([0.86, 0.77, 0.56], 0.9 + 0.12 * n + 0.12 * grain))
                }
                GRASS => {
                    let n = vnoise(u, v, 10.0, ts + 19);
                    let n2 = vnoise(u * 4.0, v, 60.0, ts + 20);
                    let g = scale3(pal.grass, 0.75 + 0.3 * n + 0.15 * n2 + 0.1 * grain);
                    lit(lerp3(g, pal.sky_horizon, (0.25 - depth).max(0.0)))
                }
                TREE => {
                    let o = obj.expect("tree pixel has an object");
                    let (cx, base, tw, th) = match o.shape {
                        Shape::RoundTree { cx, base, trunk_w, trunk_h, .. }
                        | Shape::Conifer { cx, base, trunk_w, trunk_h, .. } => (cx, base, trunk_w, trunk_h),
                        _ => (0.0, 0.0, 0.0, 0.0),
                    };
                    let is_trunk = (u - cx).abs() < tw && v > base - th;
                    if is_trunk {
                        lit([0.3, 0.2, 0.12])
                    } else {
                        let n = vnoise(u, v, 70.0, ts + 21);
                        let leaf = lerp3(pal.tree[0], pal.tree[1], o.tint[0]);
                        let side = ((u - cx) * 8.0).clamp(-0.5, 0.5);
                        let leaf = if winter && n > 0.75 { [0.85, 0.88, 0.9] } else { leaf };
                        lit(scale3(leaf, 0.7 + 0.5 * n - 0.2 * side))
                    }
                }
                BUSH => {
                    let n = vnoise(u, v, 90.0, ts + 22);
                    let g = obj.map_or(1.0, |o| o.tint[0]);
                    lit(scale3(pal.bush, g * (0.7 + 0.5 * n)))
                }
                ROAD => {
                    let mut col = scale3([0.3, 0.3, 0.32], 1.0 + 0.25 * grain);
                    let land_top = match layout.shore(u) {
                        Some(s) => s + layout.sand,
                        None => layout.horizon,
                    };
                    if let Some((rc, hw)) = layout.road_at(v, land_top) {
                        let dash = ((v - layout.horizon).max(0.0).sqrt() * 40.0).fract() < 0.5;
                        if dash && (u - rc).abs() < hw * 0.06 {
                            col = [0.9, 0.85, 0.6];
                        }
                    }
                    if winter {
                        col = lerp3(col, [0.85, 0.87, 0.9], 0.35);
                    }
                    lit(col)
                }
                HOUSE => {
                    let o = obj.expect("house pixel has an object");
                    let mut col = o.tint;
                    let mut glowing = false;
                    if let Shape::Wall { x0, x1, top, base, cols, rows } = o.shape {
                        let lx = (u - x0) / (x1 - x0);
                        let ly = (v - top) / (base - top);
                        let fx = (lx * cols as f32).fract();
                        let fy = (ly * rows as f32 * 1.4).fract();
                        let window = fx > 0.3 && fx < 0.7 && fy > 0.25 && fy < 0.7 && ly < 0.72;
                        if window {
                            col = pal.windows;
                            glowing = night;
                        } else if (lx - 0.5).abs() < 0.09 && ly > 0.72 {
                            col = [0.35, 0.22, 0.15];
                        }
                    }
                    if glowing {
                        col
                    } else {
                        lit(col)
                    }
                }
                ROOF => {
                    let o = obj.expect("roof pixel has an object");
                    let stripe = ((v * 400.0).sin() * 0.5 + 0.5) * 0.18;
                    let col = if winter { lerp3(o.tint, [0.92, 0.93, 0.96], 0.6) } else { o.tint };
                    lit(scale3(col, 0.9 + stripe))
                }
                _ => [1.0, 0.0, 1.0],
            };
            let p = &mut img[i * 3..i * 3 + 3];
            for ch in 0..3 {
                p[ch] = (col[ch] * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    Scene {
        label: LabelMap { height: h, width: w, data: label.into_iter().map(u32::from).collect() },
        instance: LabelMap { height: h, width: w, data: inst },
        image: RgbImage { width: w, height: h, data: img },
        style: layout.style,
    }
}

/// The classes as a palette (names and label colours), for `classes.json`.
pub fn palette() -> crate::pngio::Palette {
    crate::pngio::Palette {
        classes: (0..NUM_CLASSES)
            .map(|i| crate::pngio::ClassInfo { id: i as u32, name: CLASS_NAMES[i].to_string(), color: PALETTE[i] })
            .collect(),
    }
}

/// Colours a label map with [`PALETTE`] (unknown ids black), for pictures.
pub fn colorize(label: &LabelMap) -> RgbImage {
    let mut data = Vec::with_capacity(label.data.len() * 3);
    for &id in &label.data {
        data.extend_from_slice(PALETTE.get(id as usize).unwrap_or(&[0, 0, 0]));
    }
    RgbImage { width: label.width, height: label.height, data }
}
