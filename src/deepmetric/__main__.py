"""``python -m deepmetric`` (also what ``torchrun -m deepmetric train ...`` runs)."""
from deepmetric.cli import main

main()
