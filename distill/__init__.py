"""cmcd_edge.distill stage."""
