"""What every stage needs and none owns: errors and the CLI edge, atomic files and hashes, the image decoder,
the preprocessing spec and its transform, device choice, library versions. Imports no stage."""
