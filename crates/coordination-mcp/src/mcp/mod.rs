//! The verbs over MCP: the coordination server (`server`: the tools, stdio), its HTTP listener
//! (`http`), and the client side for the external MCP servers a profile uses (`client`).

pub(crate) mod client;
pub(crate) mod http;
pub(crate) mod server;
