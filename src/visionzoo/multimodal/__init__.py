"""visionzoo.multimodal"""
