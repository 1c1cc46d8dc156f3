//! Server-sent events transport for the hub (hyper). (under construction)
