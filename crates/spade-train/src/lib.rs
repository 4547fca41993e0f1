//! Training SPADE and the paper's baselines: the reference's objective and schedule,
//! optimisers with exposed state, checkpoints and resume.
pub mod config;
pub mod evaluate;
pub mod layout;
pub mod optim;
pub mod protocol;
pub mod run;
pub mod rundir;
pub mod segmenter;
pub mod trainer;
