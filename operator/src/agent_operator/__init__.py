"""Moorage operator: reconciles AgentDeployment resources."""
