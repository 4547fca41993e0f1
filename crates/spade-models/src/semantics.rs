//! Label map + instance map -> network input: the one home of this conversion.
//!
//! Channel `id` of the one-hot is 1 where the label is `id`; with `contain_dontcare_label` raw
//! 255 becomes id `label_nc` (one more channel); unless `no_instance`, the instance-edge map is
//! appended as the last channel.
use crate::error::{Error, Result};
use crate::options::NetOptions;
use candle_core::{Device, Tensor};

/// The three options that define the semantic input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemanticsSpec {
    pub label_nc: usize,
    pub contain_dontcare_label: bool,
    pub no_instance: bool,
}

impl From<&NetOptions> for SemanticsSpec {
    fn from(o: &NetOptions) -> Self {
        Self { label_nc: o.label_nc, contain_dontcare_label: o.contain_dontcare_label, no_instance: o.no_instance }
    }
}

/// The raw value that marks "don't care" in label files.
pub const DONTCARE_RAW: u32 = 255;

impl SemanticsSpec {
    pub fn one_hot_nc(&self) -> usize {
        self.label_nc + usize::from(self.contain_dontcare_label)
    }

    pub fn semantic_nc(&self) -> usize {
        self.one_hot_nc() + usize::from(!self.no_instance)
    }

    fn valid_range(&self) -> String {
        if self.contain_dontcare_label {
            format!("0..={} or {DONTCARE_RAW} (don't care)", self.label_nc - 1)
        } else {
            format!("0..={}", self.label_nc - 1)
        }
    }

    /// Maps raw label values (after any dataset-specific mapping) to class ids in place:
    /// 255 -> label_nc with don't-care; any other value >= label_nc is an error naming `file`.
    pub fn ids_from_raw(&self, raw: &mut [u32], width: usize, file: &str) -> Result<()> {
        for (i, v) in raw.iter_mut().enumerate() {
            if (*v as usize) < self.label_nc {
                continue;
            }
            if self.contain_dontcare_label && (*v == DONTCARE_RAW || *v as usize == self.label_nc) {
                *v = self.label_nc as u32;
                continue;
            }
            return Err(Error::LabelOutOfRange {
                file: file.to_string(),
                value: *v,
                x: i % width,
                y: i / width,
                valid: self.valid_range(),
            });
        }
        Ok(())
    }

    /// Builds the (N, semantic_nc, H, W) f32 input from class ids (already mapped by
    /// [`Self::ids_from_raw`]) and, unless `no_instance`, instance ids. Each map is H*W row-major.
    pub fn build(
        &self,
        ids: &[&[u32]],
        instances: Option<&[&[u32]]>,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let (n, hw) = (ids.len(), height * width);
        let nc = self.semantic_nc();
        let one_hot = self.one_hot_nc();
        let mut data = vec![0f32; n * nc * hw];
        for (b, map) in ids.iter().enumerate() {
            if map.len() != hw {
                return Err(Error::Option {
                    option: "label map size".into(),
                    value: map.len().to_string(),
                    expected: format!("{height}x{width} = {hw} values"),
                });
            }
            let base = b * nc * hw;
            for (p, &id) in map.iter().enumerate() {
                let id = id as usize;
                if id >= one_hot {
                    return Err(Error::LabelOutOfRange {
                        file: format!("label map {b}"),
                        value: id as u32,
                        x: p % width,
                        y: p / width,
                        valid: format!("class ids 0..={}", one_hot - 1),
                    });
                }
                data[base + id * hw + p] = 1.0;
            }
        }
        if !self.no_instance {
            let inst = instances.ok_or_else(|| Error::Option {
                option: "no_instance".into(),
                value: "False".into(),
                expected: "an instance map for every label map (or no_instance True)".into(),
            })?;
            if inst.len() != n {
                return Err(Error::Option {
                    option: "instance maps".into(),
                    value: inst.len().to_string(),
                    expected: format!("{n}, one per label map"),
                });
            }
            for (b, t) in inst.iter().enumerate() {
                let edges = instance_edges(t, height, width);
                let base = b * nc * hw + one_hot * hw;
                data[base..base + hw].copy_from_slice(&edges);
            }
        }
        Ok(Tensor::from_vec(data, (n, nc, height, width), device)?)
    }
}

/// A pixel is an edge (1.0) where it differs from a horizontal or vertical neighbour; each
/// differing pair marks both pixels (the reference's `get_edges`).
pub fn instance_edges(t: &[u32], height: usize, width: usize) -> Vec<f32> {
    let mut e = vec![0f32; height * width];
    for y in 0..height {
        for x in 0..width {
            let p = y * width + x;
            if x + 1 < width && t[p] != t[p + 1] {
                e[p] = 1.0;
                e[p + 1] = 1.0;
            }
            if y + 1 < height && t[p] != t[p + width] {
                e[p] = 1.0;
                e[p + width] = 1.0;
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_mark_both_pixels_of_a_differing_pair() {
        // 3x3: a single different pixel in the middle marks a plus shape.
        let t = [0, 0, 0, 0, 1, 0, 0, 0, 0];
        let e = instance_edges(&t, 3, 3);
        assert_eq!(e, vec![0., 1., 0., 1., 1., 1., 0., 1., 0.]);
    }

    #[test]
    fn one_hot_with_dontcare_and_edges() {
        let spec = SemanticsSpec { label_nc: 3, contain_dontcare_label: true, no_instance: false };
        let mut raw = vec![0, 2, 255, 1];
        spec.ids_from_raw(&mut raw, 2, "x.png").unwrap();
        assert_eq!(raw, vec![0, 2, 3, 1]);
        let inst = vec![5, 5, 5, 5];
        let t = spec.build(&[&raw], Some(&[&inst]), 2, 2, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 5, 2, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&v[0..4], &[1., 0., 0., 0.]);
        assert_eq!(&v[4..8], &[0., 0., 0., 1.]);
        assert_eq!(&v[8..12], &[0., 1., 0., 0.]);
        assert_eq!(&v[12..16], &[0., 0., 1., 0.]);
        assert_eq!(&v[16..20], &[0., 0., 0., 0.]);
    }

    #[test]
    fn out_of_range_label_names_file_value_and_range() {
        let spec = SemanticsSpec { label_nc: 6, contain_dontcare_label: false, no_instance: true };
        let mut raw = vec![0, 1, 7, 2];
        let e = spec.ids_from_raw(&mut raw, 2, "labels/a.png").unwrap_err().to_string();
        assert_eq!(e, "labels/a.png: label value 7 at (x=0, y=1) is outside the valid range 0..=5");
        let mut raw = vec![255];
        assert!(spec.ids_from_raw(&mut raw, 1, "b.png").is_err());
    }
}
