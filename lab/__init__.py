"""The lab: network namespaces that are at once demo, test bed and drill ground."""
