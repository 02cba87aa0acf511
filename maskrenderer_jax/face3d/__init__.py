"""3D face: the Basel Face Model with Deep3DFace conventions, rasterizer, rendering."""
