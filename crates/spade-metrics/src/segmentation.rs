//! Segmentation metrics of generated images: a segmenter labels each generated image, and its
//! prediction is compared with the input label map through a confusion matrix accumulated over
//! the dataset, giving pixel accuracy and mIoU.
//!
//! Don't-care pixels (ground truth equal to the dataset's don't-care id, e.g. 255 for
//! Cityscapes) are kept in their own row of the matrix so that both protocols are computed from
//! the same counts: [`DontCare::Ignore`] drops them, [`DontCare::Count`] counts them as pixels
//! that no prediction gets right (they add to the denominator of accuracy and to the false
//! positives of the predicted class).
use candle_core::{DType, Tensor};

use crate::error::{MetricsError, Result};
use crate::resize::resize_bilinear;

/// How pixels whose ground truth is the don't-care id enter the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DontCare {
    /// Excluded from every count (most reproductions; Cityscapes accuracy near 93).
    Ignore,
    /// Counted as pixels no prediction gets right (the paper's Cityscapes 81.9 is this way).
    Count,
}

impl DontCare {
    /// Both settings, in the order reports list them.
    pub const ALL: [DontCare; 2] = [DontCare::Ignore, DontCare::Count];

    /// Name used in reports and `metrics.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            DontCare::Ignore => "ignore",
            DontCare::Count => "count",
        }
    }
}

/// How a prediction and a label map of different sizes are brought together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelResize {
    /// Nearest-neighbour resize of the prediction to the label map's size (labels untouched).
    PredictionToLabel,
    /// Nearest-neighbour resize of the label map to the prediction's size.
    LabelToPrediction,
}

impl LabelResize {
    /// Name used in reports and `metrics.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelResize::PredictionToLabel => "nearest_prediction_to_label",
            LabelResize::LabelToPrediction => "nearest_label_to_prediction",
        }
    }
}

/// Confusion counts: `num_classes` ground-truth rows plus one don't-care row, by
/// `num_classes` predicted columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    dont_care: Option<u32>,
    /// Row-major `(num_classes + 1) x num_classes`; row `num_classes` is don't-care ground truth.
    counts: Vec<u64>,
}

/// Accuracy and IoU under one don't-care setting.
#[derive(Debug, Clone, PartialEq)]
pub struct SegScores {
    pub dont_care: DontCare,
    /// Correct pixels over counted pixels.
    pub pixel_accuracy: f64,
    /// Mean IoU over the classes with a non-empty union (present in ground truth or
    /// prediction); classes with an empty union are left out (`None` in `per_class_iou`).
    pub mean_iou: f64,
    pub per_class_iou: Vec<Option<f64>>,
    /// Pixels counted.
    pub pixels: u64,
}

impl ConfusionMatrix {
    /// An empty matrix; `dont_care` is the ground-truth id of don't-care pixels, if any.
    pub fn new(num_classes: usize, dont_care: Option<u32>) -> Self {
        Self { num_classes, dont_care, counts: vec![0; (num_classes + 1) * num_classes] }
    }

    /// A matrix from hand-made counts: `rows[gt][pred]` for the `num_classes` classes, and
    /// `dont_care_row[pred]` for don't-care ground truth.
    pub fn from_counts(rows: &[Vec<u64>], dont_care_row: &[u64]) -> Result<Self> {
        let c = rows.len();
        if rows.iter().any(|r| r.len() != c) || dont_care_row.len() != c {
            return Err(MetricsError::invalid(
                "confusion matrix shape",
                format!(
                    "{} rows of lengths {:?}, don't-care row {}",
                    c,
                    rows.iter().map(Vec::len).collect::<Vec<_>>(),
                    dont_care_row.len()
                ),
                format!("{c} rows and a don't-care row, each of length {c}"),
            ));
        }
        let mut m = Self::new(c, Some(u32::MAX));
        for (g, r) in rows.iter().enumerate() {
            m.counts[g * c..(g + 1) * c].copy_from_slice(r);
        }
        m.counts[c * c..].copy_from_slice(dont_care_row);
        Ok(m)
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Count of ground truth `gt` (or the don't-care row for `gt == num_classes`) predicted as
    /// `pred`.
    pub fn count(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.num_classes + pred]
    }

    /// Adds one label map and its prediction (same length, class ids).
    pub fn add(&mut self, gt: &[u32], pred: &[u32]) -> Result<()> {
        if gt.len() != pred.len() {
            return Err(MetricsError::invalid(
                "prediction size",
                pred.len(),
                format!("{} pixels as in the label map", gt.len()),
            ));
        }
        let c = self.num_classes;
        for (&g, &p) in gt.iter().zip(pred) {
            let row = if Some(g) == self.dont_care {
                c
            } else if (g as usize) < c {
                g as usize
            } else {
                return Err(MetricsError::invalid(
                    "label id",
                    g,
                    format!("below {c} or the don't-care id {:?}", self.dont_care),
                ));
            };
            if p as usize >= c {
                return Err(MetricsError::invalid("predicted class id", p, format!("below {c}")));
            }
            self.counts[row * c + p as usize] += 1;
        }
        Ok(())
    }

    /// Adds a batch: `gt` and `pred` integer tensors of the same shape (e.g. `(B, H, W)`).
    pub fn add_tensors(&mut self, gt: &Tensor, pred: &Tensor) -> Result<()> {
        if gt.dims() != pred.dims() {
            return Err(MetricsError::invalid(
                "prediction shape",
                format!("{:?}", pred.dims()),
                format!("{:?} as the label maps", gt.dims()),
            ));
        }
        let g: Vec<u32> = gt.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let p: Vec<u32> = pred.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        self.add(&g, &p)
    }

    /// Adds the counts of another matrix over the same classes.
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.num_classes != self.num_classes {
            return Err(MetricsError::invalid(
                "classes of the merged matrix",
                other.num_classes,
                format!("{}", self.num_classes),
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        Ok(())
    }

    /// Pixel accuracy and mIoU under one don't-care setting.
    pub fn scores(&self, dont_care: DontCare) -> SegScores {
        let c = self.num_classes;
        let rows = match dont_care {
            DontCare::Ignore => c,
            DontCare::Count => c + 1,
        };
        let mut total = 0u64;
        let mut correct = 0u64;
        let mut gt_sum = vec![0u64; c];
        let mut pred_sum = vec![0u64; c];
        for g in 0..rows {
            for p in 0..c {
                let n = self.counts[g * c + p];
                total += n;
                pred_sum[p] += n;
                if g < c {
                    gt_sum[g] += n;
                    if g == p {
                        correct += n;
                    }
                }
            }
        }
        let per_class_iou: Vec<Option<f64>> = (0..c)
            .map(|k| {
                let tp = self.counts[k * c + k];
                let union = gt_sum[k] + pred_sum[k] - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect();
        let present: Vec<f64> = per_class_iou.iter().flatten().copied().collect();
        let mean_iou = if present.is_empty() { 0.0 } else { present.iter().sum::<f64>() / present.len() as f64 };
        SegScores {
            dont_care,
            pixel_accuracy: if total == 0 { 0.0 } else { correct as f64 / total as f64 },
            mean_iou,
            per_class_iou,
            pixels: total,
        }
    }

    /// Both don't-care settings, side by side (ignore first).
    pub fn report(&self) -> [SegScores; 2] {
        [self.scores(DontCare::Ignore), self.scores(DontCare::Count)]
    }
}

/// How a segmenter turns the `[0, 1]` RGB images of [`Segmenter::segment`] into its input and
/// its output into class ids: reported with every score (`metrics.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Channel order fed to the network (`"RGB"` or `"BGR"`).
    pub channel_order: &'static str,
    /// Pixel values are multiplied by this first (1 for `[0, 1]`, 255 for caffe-style `[0, 255]`).
    pub value_scale: f32,
    /// Subtracted per channel, in `channel_order`, after scaling.
    pub mean: [f32; 3],
    /// Divided per channel, in `channel_order`, after the mean.
    pub std: [f32; 3],
    /// What happens to the logits before the argmax (upsampling, multi-scale fusion).
    pub output: String,
}

/// Ground-truth ids (after the dataset's mapping) to a segmenter's class ids, for segmenters
/// trained on another id space (Cityscapes labelIds -> trainIds). Ids outside the table, or
/// mapped to `ignore`, are don't-care pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroundTruthMap {
    /// Described in reports.
    pub name: String,
    /// `table[gt]` is the class id, or `ignore`.
    pub table: Vec<u32>,
    /// The don't-care id the mapped labels use.
    pub ignore: u32,
}

impl GroundTruthMap {
    /// Maps ids; those outside the table become `ignore`.
    pub fn apply(&self, ids: &[u32]) -> Vec<u32> {
        ids.iter().map(|&g| self.table.get(g as usize).copied().unwrap_or(self.ignore)).collect()
    }
}

/// A segmentation network used as a metric.
pub trait Segmenter {
    /// Name of the network (and its training set), for reports.
    fn name(&self) -> String;
    /// Hex SHA-256 of the weights file(s) it runs with.
    fn weights_hash(&self) -> String;
    /// `(height, width)` images are resized to before [`Segmenter::segment`].
    fn input_resolution(&self) -> (usize, usize);
    /// Number of classes it predicts (ids `0..num_classes`).
    fn num_classes(&self) -> usize;
    /// Class ids `(B, H', W')` (`u32`) of RGB images `(B, 3, H, W)` in `[0, 1]` at
    /// [`Segmenter::input_resolution`].
    fn segment(&self, images: &Tensor) -> Result<Tensor>;
    /// Its input normalisation and output handling, when it is a published network.
    fn preprocessing(&self) -> Option<Preprocessing> {
        None
    }
    /// How ground-truth ids are brought into its class ids; `None` when they already are.
    fn ground_truth_map(&self) -> Option<GroundTruthMap> {
        None
    }
    /// Its penultimate features of RGB images `(B, 3, H, W)` in `[0, 1]`, globally
    /// average-pooled to `(B, D)`, when it exposes them: the feature space of the "Fréchet
    /// distance in the evaluator's penultimate features". `None` when it does not.
    fn penultimate_features(&self, _images: &Tensor) -> Option<Result<Tensor>> {
        None
    }
}

/// An empty confusion matrix for `segmenter`: its classes, and as don't-care id the one of its
/// [`GroundTruthMap`] when it has one, else the dataset's (`dataset_dont_care`).
pub fn confusion_matrix_for(segmenter: &dyn Segmenter, dataset_dont_care: Option<u32>) -> ConfusionMatrix {
    let dont_care = match segmenter.ground_truth_map() {
        Some(m) => Some(m.ignore),
        None => dataset_dont_care,
    };
    ConfusionMatrix::new(segmenter.num_classes(), dont_care)
}

/// Nearest-neighbour resize of a `(B, H, W)` class map as torch's `mode="nearest"`
/// (`src = floor(dst * in / out)`).
pub fn resize_labels_nearest(labels: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, h, w) = labels.dims3()?;
    if (h, w) == (out_h, out_w) {
        return Ok(labels.clone());
    }
    let idx = |n_in: usize, n_out: usize| -> Vec<u32> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out).map(|d| ((d as f32 * scale).floor() as usize).min(n_in - 1) as u32).collect()
    };
    let dev = labels.device();
    let ih = Tensor::from_vec(idx(h, out_h), out_h, dev)?;
    let iw = Tensor::from_vec(idx(w, out_w), out_w, dev)?;
    Ok(labels.index_select(&ih, 1)?.index_select(&iw, 2)?)
}

/// Runs `segmenter` on images `(B, 3, H, W)` in `[0, 1]` (bilinearly resized to its input
/// resolution) and adds the comparison with `labels` `(B, H_l, W_l)` to `cm` (labels go through
/// the segmenter's [`GroundTruthMap`] first; make `cm` with [`confusion_matrix_for`]).
pub fn accumulate(
    cm: &mut ConfusionMatrix,
    segmenter: &dyn Segmenter,
    images: &Tensor,
    labels: &Tensor,
    resize: LabelResize,
) -> Result<()> {
    let (rh, rw) = segmenter.input_resolution();
    let x = resize_bilinear(images, rh, rw)?;
    let pred = segmenter.segment(&x)?.to_dtype(DType::U32)?;
    let mut labels = labels.to_dtype(DType::U32)?;
    if let Some(map) = segmenter.ground_truth_map() {
        let ids: Vec<u32> = labels.flatten_all()?.to_vec1()?;
        labels = Tensor::from_vec(map.apply(&ids), labels.shape(), labels.device())?;
    }
    let (_, lh, lw) = labels.dims3()?;
    let (_, ph, pw) = pred.dims3()?;
    let (gt, pred) = match resize {
        LabelResize::PredictionToLabel => (labels, resize_labels_nearest(&pred, lh, lw)?),
        LabelResize::LabelToPrediction => (resize_labels_nearest(&labels, ph, pw)?, pred),
    };
    cm.add_tensors(&gt, &pred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn known_answer_three_classes() {
        // gt\pred   0   1   2
        //   0      50   5   0
        //   1      10  30  10
        //   2       0   0   0     (class 2 never in ground truth, predicted 10 times)
        // don't care: 20 predicted as 0, 5 as 1.
        let m = ConfusionMatrix::from_counts(&[vec![50, 5, 0], vec![10, 30, 10], vec![0, 0, 0]], &[20, 5, 0]).unwrap();
        let ig = m.scores(DontCare::Ignore);
        assert_eq!(ig.pixels, 105);
        assert!(close(ig.pixel_accuracy, 80.0 / 105.0));
        // IoU0 = 50 / (55 + 60 - 50) = 50/65; IoU1 = 30 / (50 + 35 - 30) = 30/55;
        // IoU2 = 0 / (0 + 10 - 0) = 0.
        assert!(close(ig.per_class_iou[0].unwrap(), 50.0 / 65.0));
        assert!(close(ig.per_class_iou[1].unwrap(), 30.0 / 55.0));
        assert!(close(ig.per_class_iou[2].unwrap(), 0.0));
        assert!(close(ig.mean_iou, (50.0 / 65.0 + 30.0 / 55.0 + 0.0) / 3.0));

        let ct = m.scores(DontCare::Count);
        assert_eq!(ct.pixels, 130);
        assert!(close(ct.pixel_accuracy, 80.0 / 130.0));
        // Don't-care pixels are false positives of the class they were predicted as.
        assert!(close(ct.per_class_iou[0].unwrap(), 50.0 / 85.0));
        assert!(close(ct.per_class_iou[1].unwrap(), 30.0 / 60.0));
        assert!(close(ct.per_class_iou[2].unwrap(), 0.0));
        assert!(close(ct.mean_iou, (50.0 / 85.0 + 0.5) / 3.0));
        let [a, b] = m.report();
        assert_eq!((a.dont_care, b.dont_care), (DontCare::Ignore, DontCare::Count));
    }

    #[test]
    fn absent_class_is_left_out_of_the_mean() {
        // Class 1 neither in ground truth nor predicted.
        let m = ConfusionMatrix::from_counts(&[vec![8, 0], vec![0, 0]], &[0, 0]).unwrap();
        let s = m.scores(DontCare::Ignore);
        assert_eq!(s.per_class_iou, vec![Some(1.0), None]);
        assert!(close(s.mean_iou, 1.0));
        assert!(close(s.pixel_accuracy, 1.0));
    }

    #[test]
    fn accumulates_pixels_with_dont_care_id() {
        let mut m = ConfusionMatrix::new(2, Some(255));
        m.add(&[0, 0, 1, 255, 1], &[0, 1, 1, 0, 1]).unwrap();
        m.add(&[255], &[1]).unwrap();
        assert_eq!(m.count(0, 0), 1);
        assert_eq!(m.count(0, 1), 1);
        assert_eq!(m.count(1, 1), 2);
        assert_eq!(m.count(2, 0), 1);
        assert_eq!(m.count(2, 1), 1);
        assert!(close(m.scores(DontCare::Ignore).pixel_accuracy, 0.75));
        assert!(close(m.scores(DontCare::Count).pixel_accuracy, 0.5));
        let e = m.add(&[7], &[0]).unwrap_err().to_string();
        assert!(e.contains("label id") && e.contains('7'), "{e}");
        assert!(m.add(&[0], &[2]).is_err());
        assert!(m.add(&[0, 1], &[0]).is_err());
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = ConfusionMatrix::new(2, None);
        a.add(&[0, 1], &[0, 0]).unwrap();
        let mut b = ConfusionMatrix::new(2, None);
        b.add(&[1], &[1]).unwrap();
        a.merge(&b).unwrap();
        assert_eq!((a.count(0, 0), a.count(1, 0), a.count(1, 1)), (1, 1, 1));
        assert!(a.merge(&ConfusionMatrix::new(3, None)).is_err());
    }

    struct Threshold;
    impl Segmenter for Threshold {
        fn name(&self) -> String {
            "threshold".into()
        }
        fn weights_hash(&self) -> String {
            "none".into()
        }
        fn input_resolution(&self) -> (usize, usize) {
            (2, 2)
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn segment(&self, images: &Tensor) -> Result<Tensor> {
            // Class 1 where the red channel exceeds 0.5.
            let r = images.narrow(1, 0, 1)?.squeeze(1)?;
            Ok(r.gt(0.5)?.to_dtype(DType::U32)?)
        }
    }

    #[test]
    fn accumulate_through_a_segmenter() {
        let dev = Device::Cpu;
        // 4x4 image: left half red=1, right half red=0. Labels at 4x4: left 1, right 0,
        // except one don't-care pixel.
        let mut img = vec![0f32; 3 * 16];
        for y in 0..4 {
            for x in 0..2 {
                img[y * 4 + x] = 1.0;
            }
        }
        let images = Tensor::from_vec(img, (1, 3, 4, 4), &dev).unwrap();
        let mut lab = vec![0u32; 16];
        for y in 0..4 {
            for x in 0..2 {
                lab[y * 4 + x] = 1;
            }
        }
        lab[15] = 255;
        let labels = Tensor::from_vec(lab, (1, 4, 4), &dev).unwrap();
        let mut cm = ConfusionMatrix::new(2, Some(255));
        accumulate(&mut cm, &Threshold, &images, &labels, LabelResize::PredictionToLabel).unwrap();
        let s = cm.scores(DontCare::Ignore);
        assert_eq!(s.pixels, 15);
        assert!(close(s.pixel_accuracy, 1.0));
        assert!(close(cm.scores(DontCare::Count).pixel_accuracy, 15.0 / 16.0));
    }

    #[test]
    fn nearest_resize_matches_torch() {
        // torch nearest 2 -> 4: indices [0, 0, 1, 1]; 4 -> 2: [0, 2].
        let t = Tensor::new(&[[[1u32, 2], [3, 4]]], &Device::Cpu).unwrap();
        let r = resize_labels_nearest(&t, 4, 4).unwrap();
        let v: Vec<Vec<u32>> = r.squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(v[0], vec![1, 1, 2, 2]);
        assert_eq!(v[3], vec![3, 3, 4, 4]);
        let d = resize_labels_nearest(&r, 2, 2).unwrap();
        assert_eq!(d.squeeze(0).unwrap().to_vec2::<u32>().unwrap(), vec![vec![1, 2], vec![3, 4]]);
    }
}
