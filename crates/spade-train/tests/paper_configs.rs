//! The paper configs (`experiments/paper_*.yaml`) load, build the paper's generator at the
//! paper's size, train with the VGG loss from the hub, and are scored by the paper's segmenter.
use std::path::Path;

use spade_data::DatasetMode;
use spade_train::config::ExperimentConfig;
use spade_train::protocol::{eval_label_size, Protocol, SegmenterKind};

#[test]
fn paper_configs_are_the_papers_settings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    let cases = [
        ("paper_coco_stuff.yaml", DatasetMode::Coco, SegmenterKind::DeepLabV2, (256, 256), 100),
        ("paper_ade20k.yaml", DatasetMode::Ade20k, SegmenterKind::UperNet, (256, 256), 200),
        ("paper_ade20k_outdoor.yaml", DatasetMode::Ade20kOutdoor, SegmenterKind::UperNet, (256, 256), 200),
        ("paper_cityscapes.yaml", DatasetMode::Cityscapes, SegmenterKind::Drn, (256, 512), 200),
    ];
    for (file, mode, seg, size, epochs) in cases {
        let cfg = ExperimentConfig::load(&dir.join(file), &["data.dataroot=/data".into()]).unwrap();
        assert_eq!(cfg.data.dataset_mode, mode, "{file}");
        let o = cfg.net_options().unwrap();
        assert_eq!(o.output_size(), size, "{file}");
        assert_eq!((o.ngf, cfg.train.batch_size), (64, 32), "{file}");
        assert_eq!(cfg.train.niter + cfg.train.niter_decay, epochs, "{file}");
        assert!(
            !cfg.loss.no_vgg_loss
                && cfg.loss.vgg_weights_hub.as_deref() == Some("timm/vgg19.tv_in1k:model.safetensors")
        );
        let p = Protocol::paper(mode);
        assert_eq!((p.segmenter, p.image_size), (seg, size), "{file}");
        assert_eq!(eval_label_size(&cfg.data).unwrap(), size, "{file}");
    }
}
