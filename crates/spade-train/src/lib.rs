//! Training SPADE and the paper's baselines: the reference's objective and schedule,
//! optimisers with exposed state, checkpoints and resume.
pub mod config;
pub mod optim;
pub mod run;
pub mod trainer;
