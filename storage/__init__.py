"""Label stores and the file formats mtpano reads and writes."""
