"""visionzoo.detection"""
