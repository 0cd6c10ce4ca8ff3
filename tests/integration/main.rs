//! Integration tests of the host library against real `redis-server`
//! processes that the tests start on free loopback ports.

mod support;

mod basics;
mod cli;
mod cluster;
mod components;
mod defaults;
mod doctor;
mod faults;
mod fencing;
mod guard;
mod hostile;
mod input;
mod metrics;
mod promises;
mod run;
mod sandbox;
mod scenarios;
mod security;
