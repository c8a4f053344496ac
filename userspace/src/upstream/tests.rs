//! End-to-end tests of load balancing and discovery over real sockets.
