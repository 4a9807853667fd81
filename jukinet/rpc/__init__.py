"""RPC plumbing: the call guard, authorization table, converters, servicers shared by node kinds, relay sender."""
