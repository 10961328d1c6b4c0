//! Rate limiting middleware for actix-web, with tokens from the LightRate API (work in
//! progress: see the lightrate-actix issue).
