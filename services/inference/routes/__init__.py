"""HTTP edges: each module translates requests into calls on the app's components and back."""
