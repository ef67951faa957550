//! Every layer: forward and hand-written backward side by side, one module per op family.

pub mod activation;
pub mod batchnorm;
pub mod batchnorm_blocked;
pub mod conv;
pub mod linear;
pub mod loss;
pub mod pool;
pub mod pool_blocked;
pub mod shape;
