"""ktracecli: ftrace's function and function_graph tracers for user-space x86_64 programs."""

__version__ = "0.1.0"
