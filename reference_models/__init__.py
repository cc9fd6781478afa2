"""reference_models"""
