"""Inverse kinematics of a robot arm from its URDF, as a feedback_solver plugin (see task.py)."""
