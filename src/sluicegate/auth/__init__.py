"""Who is calling: credentials in the request, API key material, and verified principals with a warm cache."""
