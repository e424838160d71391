//! Pure decisions. Every planner here is a synchronous function of facts, policy and the
//! current time; nothing here performs I/O or imports `crate::aws` or an SDK crate, so each
//! one is table-tested on its own.

pub mod ancestry;
pub mod disk;
pub mod ids;
pub mod import;
pub mod lineage;
pub mod naming;
pub mod publish;
pub mod retention;
pub mod spec;
pub mod stamp;
pub mod tags;
pub mod upload;
