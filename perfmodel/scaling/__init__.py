"""Scaling laws: closed-form compute-optimal allocation (dense and MoE), fitting, hardware-aware allocation."""
