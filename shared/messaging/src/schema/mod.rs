//! The messaging tables of every module's schema, as the migrations each module's migrator
//! lists among its own: the tables ([`MessagingTables`]), the index of the in-process
//! queue's unclaimed rows ([`QueueIndex`]), on PostgreSQL the index that finds the first
//! row of a key ([`KeyHeadIndex`]), and the relay's record of what it handed over
//! directly ([`HandedThrough`]). They live here, beside the code that uses them,
//! and travel with the module when it is extracted.

// `MigrationTrait` is declared with `&SchemaManager` and async-trait cannot match an
// explicit `'_` against it.
#![allow(elided_lifetimes_in_paths)]

mod handed_through;
mod key_head_index;
mod queue_index;
mod tables;

pub use handed_through::HandedThrough;
pub use key_head_index::KeyHeadIndex;
pub use queue_index::QueueIndex;
pub use tables::MessagingTables;
