pub mod auth;
pub mod catalogue;
pub mod control;
pub mod events;
pub mod execute;
pub mod health;
pub mod tasks;
pub mod ui;
