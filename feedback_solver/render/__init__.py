"""Shared rendering for the vision tasks: headless OpenGL via pyrender, mesh loading and normalisation."""
from feedback_solver.render.gl import Camera, OpenGLUnavailable, SilhouetteRenderer, renderer
from feedback_solver.render.mesh import load_mesh, normalise
from feedback_solver.render.parallel import render_parallel

__all__ = ["Camera", "OpenGLUnavailable", "SilhouetteRenderer", "renderer", "load_mesh", "normalise", "render_parallel"]
