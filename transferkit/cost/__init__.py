"""Know before you run: what a training run will hold in memory, compute, take and cost (`transferkit cost`)."""

from .estimate import Cost, Workload, activations_both_ways, cheapest_fit, estimate
from .hardware import Hardware, custom_hardware, get_hardware, hardware_names

__all__ = ["Cost", "Workload", "Hardware", "activations_both_ways", "cheapest_fit", "custom_hardware", "estimate", "get_hardware",
           "hardware_names"]
