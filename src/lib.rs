//! herald
