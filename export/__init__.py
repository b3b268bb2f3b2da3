"""cmcd_edge.export stage."""
