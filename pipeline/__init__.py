"""Label generation: teachers on gnomonic patches, fusion into ERP label stores, Ray sharding."""
