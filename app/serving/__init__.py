"""Scale-out serving (`serving = "ray"`): Engine replicas on a Ray Serve cluster, one per GPU.

Imported only in Ray mode; the default in-process path never loads Ray.
"""
