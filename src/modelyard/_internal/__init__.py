"""Infrastructure shared by every stage: atomic files, seeding, devices, run directories."""
