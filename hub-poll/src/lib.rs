//! Long-polling transport for the hub (hyper), with cursors that lose nothing. (under construction)
